// llmc stand-in: Serializer specializations. wasm32 is little-endian like every host TVM writes
// executables on, so values go out as their raw bytes; containers carry a uint64 count first.
#ifndef LLMC_TVM_SUPPORT_SERIALIZER_H_
#define LLMC_TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

/*! \brief Plain bytes: numbers and enums. */
template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T> || std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const T& value) { strm->Write(static_cast<const void*>(&value), sizeof(T)); }
  static bool Read(Stream* strm, T* out) { return strm->Read(static_cast<void*>(out), sizeof(T)) == sizeof(T); }
};

namespace detail {
inline void WriteBytes(Stream* strm, const char* data, uint64_t size) {
  strm->Write(size);
  if (size) strm->Write(static_cast<const void*>(data), size);
}
inline bool ReadBytes(Stream* strm, std::string* out) {
  uint64_t size = 0;
  if (!strm->Read(&size)) return false;
  out->resize(size);
  return size == 0 || strm->Read(static_cast<void*>(&(*out)[0]), size) == size;
}
}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& s) { detail::WriteBytes(strm, s.data(), s.size()); }
  static bool Read(Stream* strm, std::string* out) { return detail::ReadBytes(strm, out); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& s) { detail::WriteBytes(strm, s.data(), s.size()); }
  static bool Read(Stream* strm, ffi::String* out) {
    std::string s;
    if (!detail::ReadBytes(strm, &s)) return false;
    *out = ffi::String(std::move(s));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::vector<T>& v) {
    strm->Write(static_cast<uint64_t>(v.size()));
    for (const T& x : v) Serializer<T>::Write(strm, x);
  }
  static bool Read(Stream* strm, std::vector<T>* out) {
    uint64_t size = 0;
    if (!strm->Read(&size)) return false;
    out->resize(size);
    for (uint64_t i = 0; i < size; ++i) {
      if (!Serializer<T>::Read(strm, &(*out)[i])) return false;
    }
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& p) {
    Serializer<A>::Write(strm, p.first);
    Serializer<B>::Write(strm, p.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* out) {
    return Serializer<A>::Read(strm, &out->first) && Serializer<B>::Read(strm, &out->second);
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::unordered_map<K, V>& m) {
    Serializer<std::vector<std::pair<K, V>>>::Write(strm, std::vector<std::pair<K, V>>(m.begin(), m.end()));
  }
  static bool Read(Stream* strm, std::unordered_map<K, V>* out) {
    std::vector<std::pair<K, V>> items;
    if (!Serializer<std::vector<std::pair<K, V>>>::Read(strm, &items)) return false;
    out->clear();
    out->insert(items.begin(), items.end());
    return true;
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& a) {
    strm->Write(static_cast<uint64_t>(a.size()));
    for (size_t i = 0; i < a.size(); ++i) Serializer<T>::Write(strm, a[i]);
  }
  static bool Read(Stream* strm, ffi::Array<T>* out) {
    uint64_t size = 0;
    if (!strm->Read(&size)) return false;
    ffi::Array<T> result;
    for (uint64_t i = 0; i < size; ++i) {
      T item;
      if (!Serializer<T>::Read(strm, &item)) return false;
      result.push_back(std::move(item));
    }
    *out = std::move(result);
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Map<K, V>& m) {
    strm->Write(static_cast<uint64_t>(m.size()));
    for (const auto& kv : m) {
      Serializer<K>::Write(strm, kv.first);
      Serializer<V>::Write(strm, kv.second);
    }
  }
  static bool Read(Stream* strm, ffi::Map<K, V>* out) {
    uint64_t size = 0;
    if (!strm->Read(&size)) return false;
    ffi::Map<K, V> result;
    for (uint64_t i = 0; i < size; ++i) {
      K key;
      V value;
      if (!Serializer<K>::Read(strm, &key) || !Serializer<V>::Read(strm, &value)) return false;
      result.Set(std::move(key), std::move(value));
    }
    *out = std::move(result);
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDataType& t) {
    strm->Write(t.code);
    strm->Write(t.bits);
    strm->Write(t.lanes);
  }
  static bool Read(Stream* strm, DLDataType* t) {
    return strm->Read(&t->code) && strm->Read(&t->bits) && strm->Read(&t->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDevice& d) {
    strm->Write(static_cast<int32_t>(d.device_type));
    strm->Write(d.device_id);
  }
  static bool Read(Stream* strm, DLDevice* d) {
    int32_t type = 0;
    if (!strm->Read(&type) || !strm->Read(&d->device_id)) return false;
    d->device_type = static_cast<DLDeviceType>(type);
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // LLMC_TVM_SUPPORT_SERIALIZER_H_
