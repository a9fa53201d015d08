// SHA-256 of a file (FIPS 180-4), to check an artifact against its manifest as nfdseg does.
#pragma once
#include <string>

std::string sha256_file(const std::string& path);  // lowercase hex; throws NfdsegError when unreadable
