// Reporting the first bad element found by kernels running on many threads.
#ifndef LOWBIT_UTIL_ERRORS_H_
#define LOWBIT_UTIL_ERRORS_H_

#include <cstddef>
#include <cstdint>
#include <mutex>

namespace lowbit {

enum class ErrorKind : int32_t {
  kNone = 0,
  kNonFinite = 1,        // NaN or Inf in the input
  kScaleOverflow = 2,    // a group scale or zero point beyond float16's range
  kCastOverflow = 3,     // a value beyond the range of the output float type
};

// Keeps the error with the lowest (row, col): results do not depend on which
// thread saw its error first.
class ErrorSink {
 public:
  void Report(ErrorKind kind, size_t row, size_t col) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (kind_ == ErrorKind::kNone || row < row_ ||
        (row == row_ && col < col_)) {
      kind_ = kind;
      row_ = row;
      col_ = col;
    }
  }
  ErrorKind kind() const { return kind_; }
  size_t row() const { return row_; }
  size_t col() const { return col_; }

 private:
  std::mutex mutex_;
  ErrorKind kind_ = ErrorKind::kNone;
  size_t row_ = 0;
  size_t col_ = 0;
};

}  // namespace lowbit

#endif  // LOWBIT_UTIL_ERRORS_H_
