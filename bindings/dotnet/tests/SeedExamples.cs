// The seed's usage examples 1-4 (LEVEL3_FINAL_REPORT.md, "Usage Examples"), as they are written
// there, with four changes that keep the tests short or fill what the report leaves out: the
// model path is a parameter, example 1 asks for at most 16 new tokens, example 4 for 16 instead
// of 512, and `messages` in example 4 is declared.
using System;
using System.Collections.Generic;
using SmallMind.Public;
using SmallMind.Abstractions;

namespace SmallMind.Tests
{
    public static class SeedExamples
    {
        public static ChatResponse Example1(string modelPath)
        {
            // Create engine
            var engine = SmallMindFactory.Create(new SmallMindOptions
            {
                ModelPath = modelPath,
                EnableKvCache = true
            });

            // Create chat client
            var client = engine.CreateChatClient(new ChatClientOptions
            {
                EnableKvCache = true
            });

            // Add system message
            client.AddSystemMessage("You are a helpful assistant.");

            // Send chat request
            var request = new ChatRequest
            {
                Messages = new[]
                {
                    new ChatMessageV3
                    {
                        Role = ChatRole.User,
                        Content = "What is AI?"
                    }
                },
                Options = new GenerationOptions { MaxNewTokens = 16 }
            };

            var response = client.SendChat(request);

            Console.WriteLine($"Response: {response.Message.Content}");
            Console.WriteLine($"Tokens: {response.Usage.TotalTokens}");
            Console.WriteLine($"TTFT: {response.Usage.TimeToFirstTokenMs}ms");
            Console.WriteLine($"Tokens/sec: {response.Usage.TokensPerSecond:F2}");

            client.Dispose();
            engine.Dispose();
            return response;
        }

        public static ChatResponse Example2(ISmallMindEngine engine)
        {
            var client = engine.CreateChatClient(new ChatClientOptions
            {
                EnableKvCache = true,
                DefaultContextPolicy = new KeepLastNTurnsPolicy(maxTurns: 5)
            });

            // Context policy automatically keeps last 5 turns
            // Deterministic: same input = same output
            using (client)
            {
                return client.SendChat(new ChatRequest
                {
                    Messages = new[] { new ChatMessageV3 { Role = ChatRole.User, Content = "Hello" } },
                    Options = new GenerationOptions { MaxNewTokens = 8, Temperature = 0 }
                });
            }
        }

        public static ChatResponse Example3(ISmallMindEngine engine)
        {
            var telemetry = new ConsoleTelemetry();

            var client = engine.CreateChatClient(new ChatClientOptions
            {
                EnableKvCache = true,
                DefaultTelemetry = telemetry
            });

            // Telemetry logs:
            // [session-123] Request started with 2 messages
            // [session-123] First token: 42.50ms (TTFT)
            // ...
            using (client)
            {
                return client.SendChat(new ChatRequest
                {
                    Messages = new[] { new ChatMessageV3 { Role = ChatRole.User, Content = "Hello" } },
                    Options = new GenerationOptions { MaxNewTokens = 8 }
                });
            }
        }

        public static ChatResponse Example4(IChatClient client)
        {
            var messages = new List<ChatMessageV3> { new ChatMessageV3 { Role = ChatRole.User, Content = "Tell me a story." } };

            var request = new ChatRequest
            {
                Messages = messages,
                ContextPolicy = new SlidingWindowPolicy(), // Override default policy
                Options = new GenerationOptions
                {
                    MaxNewTokens = 16,
                    Temperature = 0.7f
                }
            };

            var response = client.SendChat(request);
            return response;
        }
    }
}
