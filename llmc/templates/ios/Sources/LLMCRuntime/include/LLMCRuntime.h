// Objective-C face of llmc's C++ chat engine (llmc_chat.h), for Swift.
#import <Foundation/Foundation.h>

NS_ASSUME_NONNULL_BEGIN

/// What one answer took (LLMCNativeChat's sendMessage).
@interface LLMCReplyStats : NSObject
@property(nonatomic) NSInteger promptTokens;   ///< tokens prefilled this turn (the rest was in the KV cache)
@property(nonatomic) NSInteger outputTokens;
@property(nonatomic) double prefillSeconds;
@property(nonatomic) double decodeSeconds;
@property(nonatomic, copy) NSString *finishReason;  ///< stop, length, context_window or cancelled
@end

/// One conversation with one model linked into the app (Metal).
@interface LLMCNativeChat : NSObject

/// Loads the model `modelId` of the app config (llmc-app-config.json) with the files in `modelDir`.
- (nullable instancetype)initWithAppConfig:(NSString *)appConfigPath
                                   modelId:(NSString *)modelId
                                  modelDir:(NSString *)modelDir
                                     error:(NSError **)error;

/// Answers `text`; `onText` receives each piece of the answer as it is generated (on the calling thread).
/// Blocks: call it off the main thread.
- (nullable LLMCReplyStats *)sendMessage:(NSString *)text
                             temperature:(float)temperature
                                    topP:(float)topP
                                    seed:(uint64_t)seed
                               maxTokens:(NSInteger)maxTokens
                                  onText:(void (^)(NSString *piece))onText
                                   error:(NSError **)error;

/// Stops a running sendMessage after its current token (any thread).
- (void)stop;

/// Starts a new conversation (the system prompt is used when the model's template has a system role).
- (void)resetWithSystemPrompt:(NSString *)systemPrompt;

@end

NS_ASSUME_NONNULL_END
