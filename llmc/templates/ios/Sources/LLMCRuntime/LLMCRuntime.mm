// Objective-C++ bridge: LLMCNativeChat wraps llmc::Chat (Metal device).
#import "LLMCRuntime.h"

#include <atomic>
#include <exception>
#include <memory>
#include <string>

#include "llmc_chat.h"

static NSError *LLMCError(const std::exception &err) {
  return [NSError errorWithDomain:@"LLMC"
                             code:1
                         userInfo:@{NSLocalizedDescriptionKey : [NSString stringWithUTF8String:err.what()]}];
}

@implementation LLMCReplyStats
@end

@implementation LLMCNativeChat {
  std::unique_ptr<llmc::Chat> _chat;
  std::atomic<bool> _cancel;
}

- (nullable instancetype)initWithAppConfig:(NSString *)appConfigPath
                                   modelId:(NSString *)modelId
                                  modelDir:(NSString *)modelDir
                                     error:(NSError **)error {
  if (!(self = [super init])) return nil;
  _cancel = false;
  try {
    _chat = std::make_unique<llmc::Chat>(appConfigPath.UTF8String, modelId.UTF8String, modelDir.UTF8String,
                                         kDLMetal);
  } catch (const std::exception &err) {
    if (error) *error = LLMCError(err);
    return nil;
  }
  return self;
}

- (nullable LLMCReplyStats *)sendMessage:(NSString *)text
                             temperature:(float)temperature
                                    topP:(float)topP
                                    seed:(uint64_t)seed
                               maxTokens:(NSInteger)maxTokens
                                  onText:(void (^)(NSString *piece))onText
                                   error:(NSError **)error {
  _cancel = false;
  llmc::SamplingOptions options;
  options.temperature = temperature;
  options.top_p = topP;
  options.seed = seed;
  options.max_tokens = static_cast<int>(maxTokens);
  llmc::ReplyStats stats;
  try {
    // NSString from UTF-8: the engine only hands out whole characters
    _chat->Send(
        text.UTF8String, options,
        [&](const std::string &piece) { onText([[NSString alloc] initWithBytes:piece.data()
                                                                         length:piece.size()
                                                                       encoding:NSUTF8StringEncoding]); },
        &stats, &_cancel);
  } catch (const std::exception &err) {
    if (error) *error = LLMCError(err);
    return nil;
  }
  LLMCReplyStats *out = [[LLMCReplyStats alloc] init];
  out.promptTokens = stats.prompt_tokens;
  out.outputTokens = stats.output_tokens;
  out.prefillSeconds = stats.prefill_seconds;
  out.decodeSeconds = stats.decode_seconds;
  out.finishReason = [NSString stringWithUTF8String:stats.finish_reason.c_str()];
  return out;
}

- (void)stop {
  _cancel = true;
}

- (void)resetWithSystemPrompt:(NSString *)systemPrompt {
  _chat->Reset(systemPrompt.UTF8String);
}

@end
