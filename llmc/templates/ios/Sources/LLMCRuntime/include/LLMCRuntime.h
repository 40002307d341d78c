// Objective-C face of llmc's C++ engine (llmc_engine.h), for Swift.
#import <Foundation/Foundation.h>

NS_ASSUME_NONNULL_BEGIN

@interface LLMCNativeEngine : NSObject

/// Loads the model registered under `modelLib` (its system-lib prefix) with the weights in `modelDir`.
- (nullable instancetype)initWithModelLib:(NSString *)modelLib
                                 modelDir:(NSString *)modelDir
                               paramNames:(NSArray<NSString *> *)paramNames
                            contextWindow:(NSInteger)contextWindow
                             prefillChunk:(NSInteger)prefillChunk
                                    error:(NSError **)error;

/// The greedy next token after the prompt `tokens`.
- (nullable NSNumber *)prefill:(NSArray<NSNumber *> *)tokens error:(NSError **)error;

/// The greedy next token after `token`.
- (nullable NSNumber *)decode:(NSInteger)token error:(NSError **)error;

/// Forget the conversation.
- (void)reset;

@end

NS_ASSUME_NONNULL_END
