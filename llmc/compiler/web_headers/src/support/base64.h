// llmc stand-in: base64 (RFC 4648, '=' padded) encode/decode streams over another stream.
#ifndef LLMC_SUPPORT_BASE64_H_
#define LLMC_SUPPORT_BASE64_H_

#include <tvm/support/io.h>

#include <cstdint>
#include <string>

namespace tvm {
namespace support {

namespace base64 {
inline const char* Alphabet() { return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"; }
inline int Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

/*! \brief Encodes what is written into base64 text on ``out``; call Finish() at the end. */
class Base64OutStream : public Stream {
 public:
  explicit Base64OutStream(Stream* out) : out_(out) {}
  using Stream::Read;
  using Stream::Write;
  size_t Read(void*, size_t) final { return 0; }
  size_t Write(const void* ptr, size_t size) final {
    const unsigned char* bytes = static_cast<const unsigned char*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[count_++] = bytes[i];
      if (count_ == 3) Flush(3);
    }
    return size;
  }
  void Finish() {
    if (count_) Flush(count_);
  }

 private:
  void Flush(int n) {
    for (int i = n; i < 3; ++i) group_[i] = 0;
    uint32_t v = (group_[0] << 16) | (group_[1] << 8) | group_[2];
    char text[4];
    for (int i = 0; i < 4; ++i) text[i] = i <= n ? base64::Alphabet()[(v >> (18 - 6 * i)) & 63] : '=';
    out_->Write(static_cast<const void*>(text), 4);
    count_ = 0;
  }
  Stream* out_;
  unsigned char group_[3] = {0, 0, 0};
  int count_ = 0;
};

/*! \brief Decodes base64 text read from ``in``; whitespace is skipped. */
class Base64InStream : public Stream {
 public:
  explicit Base64InStream(Stream* in) : in_(in) {}
  using Stream::Read;
  using Stream::Write;
  void InitPosition() { pending_.clear(), pos_ = 0; }
  size_t Write(const void*, size_t) final { return 0; }
  size_t Read(void* ptr, size_t size) final {
    unsigned char* out = static_cast<unsigned char*>(ptr);
    size_t done = 0;
    while (done < size) {
      if (pos_ == pending_.size() && !Refill()) break;
      out[done++] = static_cast<unsigned char>(pending_[pos_++]);
    }
    return done;
  }

 private:
  bool Refill() {
    pending_.clear(), pos_ = 0;
    int values[4], n = 0;
    char c;
    while (n < 4 && in_->Read(static_cast<void*>(&c), 1) == 1) {
      if (c == '=' || base64::Value(c) >= 0) values[n++] = c == '=' ? -1 : base64::Value(c);
    }
    if (n < 4 || values[0] < 0 || values[1] < 0) return false;
    uint32_t v = (values[0] << 18) | (values[1] << 12) | ((values[2] < 0 ? 0 : values[2]) << 6) |
                 (values[3] < 0 ? 0 : values[3]);
    pending_.push_back(static_cast<char>(v >> 16));
    if (values[2] >= 0) pending_.push_back(static_cast<char>((v >> 8) & 255));
    if (values[3] >= 0) pending_.push_back(static_cast<char>(v & 255));
    return true;
  }
  Stream* in_;
  std::string pending_;
  size_t pos_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // LLMC_SUPPORT_BASE64_H_
