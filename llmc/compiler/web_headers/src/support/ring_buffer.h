// llmc stand-in: the FIFO byte queue RPC endpoints read and write through.
#ifndef LLMC_SUPPORT_RING_BUFFER_H_
#define LLMC_SUPPORT_RING_BUFFER_H_

#include <algorithm>
#include <cstring>
#include <deque>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  size_t bytes_available() const { return data_.size(); }
  void Reserve(size_t) {}
  void Write(const void* ptr, size_t size) {
    const char* bytes = static_cast<const char*>(ptr);
    data_.insert(data_.end(), bytes, bytes + size);
  }
  void Read(void* ptr, size_t size) {
    std::copy(data_.begin(), data_.begin() + size, static_cast<char*>(ptr));
    data_.erase(data_.begin(), data_.begin() + size);
  }
  /*! \brief Hand up to ``max_size`` queued bytes to ``consume(ptr, n)``; drop what it took. */
  template <typename F>
  size_t ReadWithCallback(F consume, size_t max_size) {
    std::vector<char> chunk(data_.begin(), data_.begin() + std::min(max_size, data_.size()));
    size_t n = chunk.empty() ? 0 : consume(static_cast<const void*>(chunk.data()), chunk.size());
    data_.erase(data_.begin(), data_.begin() + n);
    return n;
  }
  /*! \brief Let ``produce(ptr, n)`` fill up to ``max_size`` bytes; queue what it wrote. */
  template <typename F>
  size_t WriteWithCallback(F produce, size_t max_size) {
    std::vector<char> chunk(max_size);
    size_t n = produce(static_cast<void*>(chunk.data()), max_size);
    data_.insert(data_.end(), chunk.begin(), chunk.begin() + n);
    return n;
  }

 private:
  std::deque<char> data_;
};

}  // namespace support
}  // namespace tvm

#endif  // LLMC_SUPPORT_RING_BUFFER_H_
