#include "util/targets.h"

#include <stdexcept>

#include "hwy/highway.h"
#include "hwy/targets.h"

namespace lowbit {

std::vector<std::string> AvailableTargets() {
  std::vector<std::string> names;
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    names.emplace_back(hwy::TargetName(target));
  }
  return names;
}

void ForceTarget(const std::string& name) {
  if (name.empty()) {
    hwy::SetSupportedTargetsForTest(0);
    return;
  }
  hwy::SetSupportedTargetsForTest(0);
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    if (name == hwy::TargetName(target)) {
      hwy::SetSupportedTargetsForTest(target);
      return;
    }
  }
  throw std::invalid_argument("unknown or unavailable SIMD target '" + name +
                              "'");
}

}  // namespace lowbit
