// Tests of the .NET bindings against the real library and the default model, under Mono:
//   mono SmallMind.Tests.exe MODEL.gguf
// Each test prints its name; the run ends with "N passed, M failed" and exits non-zero on a failure.
using System;
using System.Collections.Generic;
using System.IO;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Threading;
using SmallMind.Abstractions;
using SmallMind.Public;

namespace SmallMind.Tests
{
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class TestAttribute : Attribute { }

    public sealed class RecordingTelemetry : NoOpTelemetry
    {
        public readonly List<string> Events = new List<string>();
        public UsageStats Completed;
        public string FirstSessionId;
        public override void OnRequestStart(string sessionId, int messageCount) { FirstSessionId = sessionId; Events.Add("start:" + messageCount); }
        public override void OnKvCacheAccess(string sessionId, bool hit, int cachedTokens) { Events.Add("kv:" + hit + ":" + cachedTokens); }
        public override void OnContextPolicyApplied(string sessionId, string policyName, int originalTokens, int finalTokens) { Events.Add("policy:" + policyName); }
        public override void OnFirstToken(string sessionId, double elapsedMs) { Events.Add("first"); }
        public override void OnRequestComplete(string sessionId, UsageStats usage) { Completed = usage; Events.Add("complete"); }
    }

    public sealed class ThrowingTelemetry : NoOpTelemetry
    {
        public override void OnRequestStart(string sessionId, int messageCount) { throw new ArgumentException("telemetry failed"); }
    }

    public static class Program
    {
        static string modelPath;
        static ISmallMindEngine engine;
        static int passed, failed;

        static void Check(bool condition, string what)
        {
            if (condition) passed++;
            else { failed++; Console.Error.WriteLine("  FAIL: " + what); }
        }

        static T Throws<T>(Action action, string what) where T : Exception
        {
            try { action(); }
            catch (T e) { passed++; return e; }
            catch (Exception e) { failed++; Console.Error.WriteLine("  FAIL: " + what + ": threw " + e.GetType() + ": " + e.Message); return null; }
            failed++;
            Console.Error.WriteLine("  FAIL: " + what + ": did not throw");
            return null;
        }

        static ChatRequest User(string text, int maxTokens = 6)
        {
            return new ChatRequest
            {
                Messages = new[] { new ChatMessageV3 { Role = ChatRole.User, Content = text } },
                Options = new GenerationOptions { MaxNewTokens = maxTokens, Temperature = 0 }
            };
        }

        static int MessageCount(IChatClient client) { return client.GetSessionInfo().MessageCount; }

        // The seed's examples --------------------------------------------------------------

        [Test]
        public static void SeedExample1_BasicChat()
        {
            long before = SmallMindFactory.LiveNativeHandles;
            var r = SeedExamples.Example1(modelPath);
            Check(r.Message.Role == ChatRole.Assistant && r.Message.Content.Length > 0, "a reply");
            Check(r.Usage.TotalTokens == r.Usage.PromptTokens + r.Usage.CompletionTokens, "usage adds up");
            Check(r.Usage.TimeToFirstTokenMs > 0 && r.Usage.TokensPerSecond > 0, "measured figures");
            Check(SmallMindFactory.LiveNativeHandles == before, "Dispose freed both handles");
        }

        [Test]
        public static void SeedExample2_ContextPolicy()
        {
            var r = SeedExamples.Example2(engine);
            Check(r.RawJson.Contains("\"policy\":\"keep_last_n_turns\""), "the policy reached the library: " + r.RawJson);
            Check(r.Usage.CompletionTokens <= 8, "MaxNewTokens honoured");
        }

        [Test]
        public static void SeedExample3_ConsoleTelemetry()
        {
            var saved = Console.Out;
            var captured = new StringWriter();
            Console.SetOut(captured);
            ChatResponse r;
            try { r = SeedExamples.Example3(engine); }
            finally { Console.SetOut(saved); }
            string log = captured.ToString();
            Console.Write(log);
            Check(log.Contains("Request started with 1 messages"), "start event");
            Check(log.Contains("First token:"), "first-token event");
            Check(log.Contains("Context policy 'keep_all'"), "policy event");
            Check(log.Contains("Completed: " + r.Usage.PromptTokens + " prompt + " + r.Usage.CompletionTokens + " completion"), "complete event has the response's figures");
        }

        [Test]
        public static void SeedExample4_PerRequestPolicyOverride()
        {
            using (var client = engine.CreateChatClient(new ChatClientOptions { DefaultContextPolicy = new KeepAllPolicy() }))
            {
                var r = SeedExamples.Example4(client);
                Check(r.RawJson.Contains("\"policy\":\"sliding_window\""), "the request's policy wins: " + r.RawJson);
                Check(r.Usage.CompletionTokens <= 16, "MaxNewTokens honoured");
            }
        }

        // Streaming, callbacks, cancellation ------------------------------------------------

        [Test]
        public static void OnTokenStreamsTheReply()
        {
            using (var client = engine.CreateChatClient(new ChatClientOptions()))
            {
                var pieces = new List<string>();
                var r = client.SendChat(User("Name a colour."), pieces.Add);
                Check(pieces.Count > 0 && string.Concat(pieces) == r.Message.Content, "pieces make the reply");
            }
        }

        [Test]
        public static void TelemetryEventsArriveInOrderWithTheResponsesFigures()
        {
            var telemetry = new RecordingTelemetry();
            using (var client = engine.CreateChatClient(new ChatClientOptions { SessionId = "dotnet-telemetry", DefaultTelemetry = telemetry }))
            {
                var r = client.SendChat(User("Hello"));
                Check(string.Join(",", telemetry.Events) == "start:1,kv:False:0,policy:keep_all,first,complete", string.Join(",", telemetry.Events));
                Check(telemetry.FirstSessionId == "dotnet-telemetry", "session id");
                Check(telemetry.Completed.PromptTokens == r.Usage.PromptTokens && telemetry.Completed.CompletionTokens == r.Usage.CompletionTokens
                      && telemetry.Completed.TimeToFirstTokenMs == r.Usage.TimeToFirstTokenMs, "usage agrees");
                telemetry.Events.Clear();
                r = client.SendChat(User("And again"));
                Check(telemetry.Events.Count == 5 && telemetry.Events[1] == "kv:True:" + r.Usage.CachedTokens && r.Usage.CachedTokens > 0, "second turn hits the cache: " + string.Join(",", telemetry.Events));
            }
        }

        [Test]
        public static void GcCollectInsideACallbackIsHarmless()
        {
            using (var client = engine.CreateChatClient(new ChatClientOptions()))
            {
                var pieces = new List<string>();
                var r = client.SendChat(User("Hello there", 8), piece =>
                {
                    GC.Collect();
                    GC.WaitForPendingFinalizers();
                    GC.Collect();
                    pieces.Add(piece);
                });
                Check(pieces.Count > 1 && string.Concat(pieces) == r.Message.Content, "generation went on across collections");
            }
        }

        [Test]
        public static void AnExceptionInACallbackStopsAndIsRethrownOnTheCaller()
        {
            using (var client = engine.CreateChatClient(new ChatClientOptions()))
            {
                int calls = 0;
                var e = Throws<InvalidOperationException>(() => client.SendChat(User("Hello", 8), piece => { calls++; throw new InvalidOperationException("boom"); }), "callback exception");
                Check(e != null && e.Message == "boom" && e.StackTrace.Contains("Tests"), "the same exception, with its stack");
                Check(calls == 1, "generation stopped at the first piece");
                Check(MessageCount(client) == 0, "the failed turn is not in the history");
                Check(client.SendChat(User("Hello")).Message.Content.Length > 0, "the chat still works");
            }
            using (var client = engine.CreateChatClient(new ChatClientOptions { DefaultTelemetry = new ThrowingTelemetry() }))
            {
                var e = Throws<ArgumentException>(() => client.SendChat(User("Hello", 8)), "telemetry exception");
                Check(e != null && e.Message.StartsWith("telemetry failed"), "telemetry's exception");
            }
        }

        [Test]
        public static void CancellationTokenStopsTheSendFromAnotherThread()
        {
            using (var client = engine.CreateChatClient(new ChatClientOptions()))
            using (var cts = new CancellationTokenSource())
            {
                var started = new ManualResetEventSlim();
                var cancelled = new ManualResetEventSlim();
                var canceller = new Thread(() => { started.Wait(); cts.Cancel(); cancelled.Set(); });
                canceller.Start();
                int pieces = 0;
                Throws<OperationCanceledException>(() => client.SendChat(User("Count to fifty.", 64), piece =>
                {
                    if (++pieces == 1) { started.Set(); cancelled.Wait(); }
                }, cts.Token), "cancelled send");
                canceller.Join();
                Check(pieces <= 2, "stopped within a token, after " + pieces);
                Check(MessageCount(client) == 0, "a cancelled turn is not kept");
                Throws<OperationCanceledException>(() => client.SendChat(User("Hi"), cts.Token), "an already-cancelled token");
                Check(client.SendChat(User("Hi")).FinishReason != null, "later sends are not cancelled");
            }
        }

        // Handles ------------------------------------------------------------------------

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void Abandon()
        {
            var e = SmallMindFactory.Create(new SmallMindOptions { ModelPath = modelPath, ContextLength = 256 });
            var c = e.CreateChatClient(new ChatClientOptions());
            c.SendChat(User("Hi", 2));
        }

        [Test]
        public static void FinalizersFreeUndisposedHandles()
        {
            long before = SmallMindFactory.LiveNativeHandles;
            Abandon();
            Check(SmallMindFactory.LiveNativeHandles == before + 2, "engine and chat are live");
            for (int i = 0; i < 5 && SmallMindFactory.LiveNativeHandles != before; i++)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
            Check(SmallMindFactory.LiveNativeHandles == before, "the finalizer freed both: " + SmallMindFactory.LiveNativeHandles + " vs " + before);
        }

        [Test]
        public static void DisposedHandlesThrowObjectDisposed()
        {
            var client = engine.CreateChatClient(new ChatClientOptions());
            client.Dispose();
            client.Dispose();
            Throws<ObjectDisposedException>(() => client.SendChat(User("Hi")), "use after Dispose");
        }

        // Errors ------------------------------------------------------------------------

        [Test]
        public static void ErrorsCarryTheStatusAndTheLibrarysMessage()
        {
            var e = Throws<SmallMindException>(() => SmallMindFactory.Create(new SmallMindOptions { ModelPath = "/nonexistent/model.gguf" }), "missing file");
            Check(e != null && e.Status == SmallMindStatus.Io && e.Message.Contains("/nonexistent/model.gguf"), "IO error naming the file");
            using (var client = engine.CreateChatClient(new ChatClientOptions()))
            {
                var request = User("Hi");
                request.AdditionalFields = new Dictionary<string, object> { { "max_tokenz", 3 } };
                e = Throws<SmallMindException>(() => client.SendChat(request), "unknown field");
                Check(e != null && e.Status == SmallMindStatus.InvalidJson && e.Message.Contains("max_tokenz"), "the field is named");
                request = User("Hi");
                request.Options.Temperature = -1;
                e = Throws<SmallMindException>(() => client.SendChat(request), "out of range");
                Check(e != null && e.Status == SmallMindStatus.InvalidArgument, "invalid argument");
            }
        }

        [Test]
        public static void ToolsRunOrAreRefusedByName()
        {
            using (var client = engine.CreateChatClient(new ChatClientOptions()))
            {
                var request = User("Add 1 and 2.", 32);
                request.Tools = new[] { new ToolDefinition { Name = "add", Description = "Adds two numbers",
                    ParametersJsonSchema = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\"},\"b\":{\"type\":\"number\"}},\"required\":[\"a\",\"b\"]}" } };
                request.ToolChoice = ToolChoice.Required;
                try
                {
                    var r = client.SendChat(request);
                    Check(r.FinishReason == "tool_calls" && r.Message.ToolCalls.Count > 0 && r.Message.ToolCalls[0].Name == "add", "a required tool call: " + r.RawJson);
                }
                catch (SmallMindException e)
                {
                    // A library without tool calling refuses the field by name.
                    Check(e.Status == SmallMindStatus.InvalidArgument && e.Message.Contains("tool"), "refused: " + e.Message);
                }
            }
        }

        // Sessions ----------------------------------------------------------------------

        [Test]
        public static void SystemMessagesSessionIdsAndUtf8RoundTrip()
        {
            const string text = "Café ☕ naïve — 日本語 🚀";
            using (var client = engine.CreateChatClient(new ChatClientOptions { SessionId = "dotnet-ü" }))
            {
                client.AddSystemMessage("Be brief.");
                Check(client.GetSessionInfo().MessageCount == 1, "pending system message counted");
                client.SendChat(User(text, 3));
                var info = client.GetSessionInfo();
                Check(info.SessionId == "dotnet-ü", "session id: " + info.SessionId);
                Check(info.MessageCount == 3, "system, user, assistant: " + info.MessageCount);
                string history = client.GetHistoryJson();
                Check(history.Contains("{\"role\":\"system\",\"content\":\"Be brief.\"}"), history);
                Check(history.Contains(text), "UTF-8 both ways: " + history);
            }
        }

        [Test]
        public static void ExportThenImportRestoresTheHistory()
        {
            using (var client = engine.CreateChatClient(new ChatClientOptions { SystemPrompt = "You are terse." }))
            {
                client.SendChat(User("My name is Ada.", 4));
                string exported = client.ExportSession();
                Check(exported.Contains("\"format\":\"smallmind.chat\""), "an envelope");
                using (var restored = engine.ImportChatClient(exported))
                {
                    Check(restored.GetHistoryJson() == client.GetHistoryJson(), "same history");
                }
                client.Reset();
                Check(MessageCount(client) == 0, "reset empties it");
            }
        }

        [Test]
        public static void SaveThenLoadRestoresTheSessionAndItsCache()
        {
            string path = Path.Combine(Path.GetTempPath(), "smallmind-dotnet-" + Guid.NewGuid().ToString("N") + ".json");
            try
            {
                using (var client = engine.CreateChatClient(new ChatClientOptions { SessionId = "saved" }))
                {
                    client.SendChat(User("My name is Ada.", 4));
                    client.SaveSession(path, includeKvCache: true);
                    using (var loaded = engine.LoadChatClient(path))
                    {
                        Check(loaded.GetHistoryJson() == client.GetHistoryJson(), "same history");
                        var r = loaded.SendChat(User("And?", 2));
                        Check(r.Usage.CachedTokens > 0, "the saved KV cache is reused: " + r.Usage.CachedTokens);
                    }
                }
                var e = Throws<SmallMindException>(() => engine.LoadChatClient(path + ".missing"), "missing file");
                Check(e != null && e.Status == SmallMindStatus.Io, "IO error");
            }
            finally { File.Delete(path); }
        }

        public sealed class KvTelemetry : NoOpTelemetry
        {
            public readonly List<string> Events = new List<string>();
            public override void OnKvCacheEviction(string evictedSessionId, string reason, long freedBytes) { Events.Add("evicted:" + evictedSessionId + ":" + (freedBytes > 0) + ":" + reason.StartsWith("lru")); }
            public override void OnKvCacheBudgetExceeded(string sessionId, long currentBytes, long maxBytes) { Events.Add("exceeded:" + sessionId + ":" + (currentBytes > maxBytes) + ":" + maxBytes); }
            public override void OnRequestStart(string sessionId, int messageCount) { Events.Add("start"); }
        }

        [Test]
        public static void KvBudgetsEvictAndRefuseWithTelemetry()
        {
            var telemetry = new KvTelemetry();
            using (var small = SmallMindFactory.Create(new SmallMindOptions { ModelPath = modelPath, ContextLength = 256, MaxSessions = 1 }))
            using (var first = small.CreateChatClient(new ChatClientOptions { SessionId = "first" }))
            using (var second = small.CreateChatClient(new ChatClientOptions { SessionId = "second", DefaultTelemetry = telemetry }))
            {
                first.SendChat(User("Hi", 2));
                second.SendChat(User("Hi", 2));
                Check(string.Join(",", telemetry.Events) == "evicted:first:True:True,start", string.Join(",", telemetry.Events));
            }
            telemetry.Events.Clear();
            using (var tight = SmallMindFactory.Create(new SmallMindOptions { ModelPath = modelPath, ContextLength = 256, KvBudgetBytes = 1 }))
            using (var client = tight.CreateChatClient(new ChatClientOptions { SessionId = "tight", DefaultTelemetry = telemetry }))
            {
                var e = Throws<SmallMindException>(() => client.SendChat(User("Hi", 2)), "over budget");
                Check(e != null && e.Status == SmallMindStatus.BudgetExceeded, "BudgetExceeded");
                Check(string.Join(",", telemetry.Events) == "exceeded:tight:True:1", string.Join(",", telemetry.Events));
            }
        }

        public static int Main(string[] args)
        {
            if (args.Length < 1) { Console.Error.WriteLine("usage: SmallMind.Tests.exe MODEL.gguf [TEST...]"); return 2; }
            modelPath = args[0];
            Console.WriteLine("smallmind " + SmallMindFactory.LibraryVersion);
            engine = SmallMindFactory.Create(new SmallMindOptions { ModelPath = modelPath, Threads = 2, ContextLength = 1024 });
            foreach (var method in typeof(Program).GetMethods(BindingFlags.Public | BindingFlags.Static))
            {
                if (method.GetCustomAttributes(typeof(TestAttribute), false).Length == 0) continue;
                if (args.Length > 1 && Array.IndexOf(args, method.Name, 1) < 0) continue;
                int failedBefore = failed;
                Console.WriteLine("test " + method.Name);
                try { method.Invoke(null, null); }
                catch (TargetInvocationException e) { failed++; Console.Error.WriteLine("  FAIL: uncaught " + e.InnerException); }
                if (failed > failedBefore) Console.Error.WriteLine("  ... in " + method.Name);
            }
            engine.Dispose();
            Console.WriteLine("dotnet bindings: " + passed + " passed, " + failed + " failed");
            return failed == 0 ? 0 : 1;
        }
    }
}
