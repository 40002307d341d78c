// Objective-C++ bridge: LLMCNativeEngine wraps llmc::Engine (Metal device).
#import "LLMCRuntime.h"

#include <exception>
#include <memory>
#include <vector>

#include "llmc_engine.h"

static NSError *LLMCError(const std::exception &err) {
  return [NSError errorWithDomain:@"LLMC"
                             code:1
                         userInfo:@{NSLocalizedDescriptionKey : [NSString stringWithUTF8String:err.what()]}];
}

@implementation LLMCNativeEngine {
  std::unique_ptr<llmc::Engine> _engine;
}

- (nullable instancetype)initWithModelLib:(NSString *)modelLib
                                 modelDir:(NSString *)modelDir
                               paramNames:(NSArray<NSString *> *)paramNames
                            contextWindow:(NSInteger)contextWindow
                             prefillChunk:(NSInteger)prefillChunk
                                    error:(NSError **)error {
  if (!(self = [super init])) return nil;
  try {
    llmc::ModelSpec spec;
    spec.model_lib = modelLib.UTF8String;
    spec.model_dir = modelDir.UTF8String;
    for (NSString *name in paramNames) spec.param_names.push_back(name.UTF8String);
    spec.context_window = contextWindow;
    spec.prefill_chunk = prefillChunk;
    _engine = std::make_unique<llmc::Engine>(spec, kDLMetal);
  } catch (const std::exception &err) {
    if (error) *error = LLMCError(err);
    return nil;
  }
  return self;
}

- (nullable NSNumber *)prefill:(NSArray<NSNumber *> *)tokens error:(NSError **)error {
  try {
    std::vector<int32_t> ids;
    ids.reserve(tokens.count);
    for (NSNumber *token in tokens) ids.push_back(token.intValue);
    return @(llmc::Engine::Argmax(_engine->Prefill(ids)));
  } catch (const std::exception &err) {
    if (error) *error = LLMCError(err);
    return nil;
  }
}

- (nullable NSNumber *)decode:(NSInteger)token error:(NSError **)error {
  try {
    return @(llmc::Engine::Argmax(_engine->Decode(static_cast<int32_t>(token))));
  } catch (const std::exception &err) {
    if (error) *error = LLMCError(err);
    return nil;
  }
}

- (void)reset {
  _engine->Reset();
}

@end
