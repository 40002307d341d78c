// llmc stand-in: a bump allocator whose blocks are all freed at once (RPC scratch memory).
#ifndef LLMC_SUPPORT_ARENA_H_
#define LLMC_SUPPORT_ARENA_H_

#include <cstddef>
#include <memory>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  template <typename T>
  T* allocate_(int count = 1) {
    size_t bytes = sizeof(T) * static_cast<size_t>(count > 0 ? count : 1);
    blocks_.emplace_back(new std::max_align_t[(bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t)]);
    return reinterpret_cast<T*>(blocks_.back().get());
  }
  void RecycleAll() { blocks_.clear(); }

 private:
  std::vector<std::unique_ptr<std::max_align_t[]>> blocks_;
};

}  // namespace support
}  // namespace tvm

#endif  // LLMC_SUPPORT_ARENA_H_
