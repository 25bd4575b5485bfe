// Shared basics of the core: the error type that carries a stable code across to TypeScript.
// native/core is plain C++17 with no Node headers; the binding turns CoreError into a LowbitError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace lowbit {

// An error with one of the codes listed in src/errors.ts (e.g. "E_SHAPE").
class CoreError : public std::runtime_error {
 public:
  CoreError(const char* code, const std::string& message) : std::runtime_error(message), code_(code) {}
  const char* code() const noexcept { return code_; }

 private:
  const char* code_;
};

[[noreturn]] inline void fail(const char* code, const std::string& message) { throw CoreError(code, message); }

inline void require(bool ok, const char* code, const std::string& message) {
  if (!ok) fail(code, message);
}

// ceil(a / b) for a >= 0, b > 0, without forming a + b - 1 (which overflows for a near INT64_MAX).
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

// Overflow-checked size arithmetic: every size computed from caller-supplied dimensions goes through
// these before it is compared with a buffer length or allocated (a wrapped rows * cols once passed a
// length check as 0). Overflow throws E_SHAPE naming `what`.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what = "size") {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    fail("E_SHAPE", std::string(what) + " overflows: " + std::to_string(a) + " x " + std::to_string(b));
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what = "size") {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    fail("E_SHAPE", std::string(what) + " overflows: " + std::to_string(a) + " + " + std::to_string(b));
  return r;
}

// a * b * c ... with every step checked.
inline int64_t checked_product(std::initializer_list<int64_t> factors, const char* what = "size") {
  int64_t r = 1;
  for (int64_t f : factors) r = checked_mul(r, f, what);
  return r;
}

}  // namespace lowbit
