// llmc stand-in: NVTX profiling ranges do nothing in the browser.
#ifndef LLMC_TVM_SUPPORT_CUDA_NVTX_H_
#define LLMC_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // LLMC_TVM_SUPPORT_CUDA_NVTX_H_
