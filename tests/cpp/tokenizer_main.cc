// Test driver for llmc's C++ tokenizer: tokenizer_main TOKENIZER_JSON STRINGS_FILE
// STRINGS_FILE holds strings separated by NUL bytes; for each, one line on stdout:
//   encoded ids (space separated) TAB the streamed pieces' byte lengths TAB hex of Decode(ids)
// Ids given after a NUL-free "@ids " prefix are decoded instead of encoded text.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "llmc_tokenizer.h"

static std::string Hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) out += {digits[c >> 4], digits[c & 15]};
  return out;
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  llmc::Tokenizer tokenizer = llmc::Tokenizer::FromFile(argv[1]);
  std::ifstream file(argv[2], std::ios::binary);
  std::stringstream buffer;
  buffer << file.rdbuf();
  std::string all = buffer.str(), item;
  std::istringstream items(all);
  while (std::getline(items, item, '\0')) {
    std::vector<int32_t> ids;
    if (item.rfind("@ids ", 0) == 0) {
      std::istringstream numbers(item.substr(5));
      for (int32_t id; numbers >> id;) ids.push_back(id);
    } else {
      ids = tokenizer.Encode(item);
    }
    llmc::StreamDecoder stream(tokenizer);
    std::string pieces;
    for (int32_t id : ids) pieces += Hex(stream.Push(id)) + ",";
    pieces += Hex(stream.Finish());
    for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
    std::printf("\t%s\t%s\n", pieces.c_str(), Hex(tokenizer.Decode(ids)).c_str());
  }
  return 0;
}
