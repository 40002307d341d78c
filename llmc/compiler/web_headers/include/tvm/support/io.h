// llmc stand-in: the binary stream interface TVM's runtime serializes through.
#ifndef LLMC_TVM_SUPPORT_IO_H_
#define LLMC_TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>

namespace tvm {
namespace support {

/*! \brief How a type is written to / read from a Stream; specialized per type. */
template <typename T, typename = void>
struct Serializer {
  static constexpr bool enabled = false;
};

/*! \brief A byte stream with typed Read/Write on top of raw ones. */
class Stream {
 public:
  virtual ~Stream() = default;
  virtual size_t Read(void* ptr, size_t size) = 0;
  virtual size_t Write(const void* ptr, size_t size) = 0;

  template <typename T>
  void Write(const T& value) {
    static_assert(Serializer<T>::enabled, "no Serializer for this type");
    Serializer<T>::Write(this, value);
  }
  template <typename T>
  bool Read(T* out) {
    static_assert(Serializer<T>::enabled, "no Serializer for this type");
    return Serializer<T>::Read(this, out);
  }
  template <typename T>
  void WriteArray(const T* values, size_t count) {
    for (size_t i = 0; i < count; ++i) Write<T>(values[i]);
  }
  template <typename T>
  bool ReadArray(T* out, size_t count) {
    for (size_t i = 0; i < count; ++i) {
      if (!Read<T>(out + i)) return false;
    }
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // LLMC_TVM_SUPPORT_IO_H_
