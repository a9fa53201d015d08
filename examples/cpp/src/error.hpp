// One error type for everything a user can get wrong, printed like nfdseg's: what, seen, fix.
#pragma once
#include <stdexcept>
#include <string>

struct NfdsegError : std::runtime_error {
  std::string seen, fix;
  NfdsegError(const std::string& what, std::string seen_ = "", std::string fix_ = "")
      : std::runtime_error(what), seen(std::move(seen_)), fix(std::move(fix_)) {}
  std::string message() const {
    std::string m = std::string("error: ") + what();
    if (!seen.empty()) m += "\n  seen: " + seen;
    if (!fix.empty()) m += "\n  fix: " + fix;
    return m;
  }
};

// An image the program cannot segment (unreadable, too small, too large): printed like any error (stderr), that
// image is skipped, the rest run, and the exit status is 1.
struct ImageError : NfdsegError {
  using NfdsegError::NfdsegError;
};
