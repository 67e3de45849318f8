// Which SIMD targets the module holds, and forcing one for tests.
#ifndef LOWBIT_UTIL_TARGETS_H_
#define LOWBIT_UTIL_TARGETS_H_

#include <string>
#include <vector>

namespace lowbit {

// Names of the targets compiled into the module that this CPU can run, best
// first (for example AVX3, AVX2, SSE4, SSSE3, SCALAR).
std::vector<std::string> AvailableTargets();

// Restricts dispatch to the named target (one of AvailableTargets()), or
// lifts the restriction when `name` is empty. For tests and benchmarks; not
// thread-safe against kernels running at the same time.
void ForceTarget(const std::string& name);

}  // namespace lowbit

#endif  // LOWBIT_UTIL_TARGETS_H_
