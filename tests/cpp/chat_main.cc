// Test driver for llmc::Chat: chat_main APP_CONFIG MODEL_ID MODEL_DIR MAX_TOKENS TEMPERATURE TOP_P SEED
// stdin: one command a line, "say TEXT", "reset" or "options TEMPERATURE TOP_P SEED"; stdout for each "say":
//   hex of each streamed piece, comma separated TAB hex of the reply TAB prompt_tokens output_tokens finish_reason
#include <cstdio>
#include <iostream>
#include <string>

#include "llmc_chat.h"

static std::string Hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) out += {digits[c >> 4], digits[c & 15]};
  return out;
}

int main(int argc, char** argv) {
  if (argc != 8) return 2;
  try {
    llmc::Chat chat(argv[1], argv[2], argv[3], kDLCPU);
    llmc::SamplingOptions options;
    options.max_tokens = std::stoi(argv[4]);
    options.temperature = std::stof(argv[5]);
    options.top_p = std::stof(argv[6]);
    options.seed = std::stoull(argv[7]);
    for (std::string line; std::getline(std::cin, line);) {
      if (line == "reset") {
        chat.Reset();
        continue;
      }
      if (line.rfind("options ", 0) == 0) {
        std::sscanf(line.c_str(), "options %f %f %llu", &options.temperature, &options.top_p,
                    reinterpret_cast<unsigned long long*>(&options.seed));
        continue;
      }
      std::string pieces;
      llmc::ReplyStats stats;
      std::string reply = chat.Send(line.substr(4), options, [&](const std::string& piece) { pieces += Hex(piece) + ","; },
                                    &stats);
      std::printf("%s\t%s\t%lld %lld %s\n", pieces.c_str(), Hex(reply).c_str(),
                  static_cast<long long>(stats.prompt_tokens), static_cast<long long>(stats.output_tokens),
                  stats.finish_reason.c_str());
      std::fflush(stdout);
    }
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    return 1;
  }
  return 0;
}
