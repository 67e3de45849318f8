// Size arithmetic that cannot wrap. Every product or sum of sizes that
// allocates or indexes memory goes through these: a count from a config or a
// Python argument (a context of 2^59 positions, say) must fail with an error
// naming it, not wrap to a small buffer that the kernels then overrun.
#ifndef LOWBIT_UTIL_CHECKED_H_
#define LOWBIT_UTIL_CHECKED_H_

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace lowbit {

// Largest byte size of one buffer: what a pointer difference (and NumPy's
// signed sizes) can hold.
inline constexpr size_t kMaxBufferBytes = static_cast<size_t>(PTRDIFF_MAX);

// A size that overflows. A std::length_error, which pybind11 turns into a
// ValueError; `what` names the quantity whose size it is.
class SizeOverflow : public std::length_error {
 public:
  explicit SizeOverflow(const std::string& what)
      : std::length_error(what + ": size overflows") {}
};

// a * b, or SizeOverflow naming `what`.
inline size_t CheckedMul(size_t a, size_t b, const char* what) {
  size_t out;
  if (__builtin_mul_overflow(a, b, &out)) throw SizeOverflow(what);
  return out;
}

// a + b, or SizeOverflow naming `what`.
inline size_t CheckedAdd(size_t a, size_t b, const char* what) {
  size_t out;
  if (__builtin_add_overflow(a, b, &out)) throw SizeOverflow(what);
  return out;
}

// The product of all factors, or SizeOverflow naming `what`.
template <typename... Rest>
size_t CheckedProduct(const char* what, size_t first, Rest... rest) {
  size_t out = first;
  ((out = CheckedMul(out, static_cast<size_t>(rest), what)), ...);
  return out;
}

// Bytes of `count` elements of `elem_size` bytes, at most kMaxBufferBytes,
// or SizeOverflow naming `what`.
inline size_t CheckedBytes(size_t count, size_t elem_size, const char* what) {
  const size_t bytes = CheckedMul(count, elem_size, what);
  if (bytes > kMaxBufferBytes) throw SizeOverflow(what);
  return bytes;
}

}  // namespace lowbit

#endif  // LOWBIT_UTIL_CHECKED_H_
