// P/Invoke declarations of include/smallmind.h, the handles, and UTF-8 string marshalling.
// Strings cross as UTF-8 bytes (NUL-terminated) in both directions, never as the platform's
// "ANSI" code page; strings the library returns are copied and freed with smallmind_string_free.
using System;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;
using Microsoft.Win32.SafeHandles;

namespace SmallMind.Internal
{
    /// <summary>A smallmind_engine*. Freed by Dispose or, if never disposed, by its finalizer
    /// (on the finalizer thread; the C API allows _free from any thread).</summary>
    internal sealed class EngineHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        public EngineHandle() : base(true) { }
        protected override bool ReleaseHandle()
        {
            Native.smallmind_engine_free(handle);
            Diagnostics.Released();
            return true;
        }
    }

    /// <summary>A smallmind_chat*, freed like EngineHandle.</summary>
    internal sealed class ChatHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        public ChatHandle() : base(true) { }
        protected override bool ReleaseHandle()
        {
            Native.smallmind_chat_free(handle);
            Diagnostics.Released();
            return true;
        }
    }

    internal static class Diagnostics
    {
        private static long live;
        public static long Live { get { return Interlocked.Read(ref live); } }
        public static void Created() { Interlocked.Increment(ref live); }
        public static void Released() { Interlocked.Decrement(ref live); }
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct NativeUsage
    {
        public uint prompt_tokens;
        public uint completion_tokens;
        public uint total_tokens;
        public uint cached_tokens;
        public double time_to_first_token_ms;
        public double prefill_ms;
        public double decode_ms;
        public double prefill_tokens_per_second;
        public double decode_tokens_per_second;
    }

    /// <summary>smallmind_chat_callbacks of ABI version 1 (user_data and six callbacks).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct ChatCallbacksV1
    {
        public IntPtr user_data;
        public IntPtr on_token;
        public IntPtr on_request_start;
        public IntPtr on_first_token;
        public IntPtr on_context_policy_applied;
        public IntPtr on_kv_cache_access;
        public IntPtr on_request_complete;
    }

    /// <summary>ABI version 2: a leading struct_size (this struct's size), the version-1 fields,
    /// then execute_tool, on_tool_call and retrieve.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct ChatCallbacksV2
    {
        public uint struct_size;
        public IntPtr user_data;
        public IntPtr on_token;
        public IntPtr on_request_start;
        public IntPtr on_first_token;
        public IntPtr on_context_policy_applied;
        public IntPtr on_kv_cache_access;
        public IntPtr on_request_complete;
        public IntPtr execute_tool;
        public IntPtr on_tool_call;
        public IntPtr retrieve;
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate int OnTokenFn(IntPtr userData, IntPtr text, UIntPtr len);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void OnRequestStartFn(IntPtr userData, IntPtr sessionId, uint messageCount);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void OnFirstTokenFn(IntPtr userData, IntPtr sessionId, double elapsedMs);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void OnContextPolicyAppliedFn(IntPtr userData, IntPtr sessionId, IntPtr policy, uint before, uint after);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void OnKvCacheAccessFn(IntPtr userData, IntPtr sessionId, [MarshalAs(UnmanagedType.I1)] bool hit, uint cachedTokens);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void OnRequestCompleteFn(IntPtr userData, IntPtr sessionId, IntPtr usage);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void OnToolCallFn(IntPtr userData, IntPtr sessionId, IntPtr name, double elapsedMs);

    internal static class Native
    {
        private const string Lib = "smallmind";

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr smallmind_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint smallmind_abi_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern IntPtr smallmind_last_error();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern void smallmind_string_free(IntPtr s);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_engine_create(byte[] optionsJson, IntPtr callbacks, out EngineHandle engine);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern void smallmind_engine_free(IntPtr engine);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_engine_info(EngineHandle engine, out IntPtr json);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_engine_tokenize(EngineHandle engine, byte[] request, out IntPtr json);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_engine_detokenize(EngineHandle engine, byte[] request, out IntPtr json);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_engine_complete(EngineHandle engine, byte[] request, IntPtr callbacks, out IntPtr json);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_chat_create(EngineHandle engine, byte[] options, out ChatHandle chat);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern void smallmind_chat_free(IntPtr chat);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_chat_send(ChatHandle chat, byte[] request, IntPtr callbacks, out IntPtr json);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_chat_render(ChatHandle chat, byte[] request, out IntPtr json);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint smallmind_chat_cancel(ChatHandle chat);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] public static extern uint smallmind_chat_reset(ChatHandle chat);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_chat_history(ChatHandle chat, out IntPtr json);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_chat_export(ChatHandle chat, out IntPtr json);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint smallmind_chat_import(EngineHandle engine, byte[] json, out ChatHandle chat);

        /// <summary>The string as UTF-8 with a terminating NUL.</summary>
        public static byte[] Utf8(string s)
        {
            if (s == null) return null;
            int n = Encoding.UTF8.GetByteCount(s);
            var bytes = new byte[n + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, bytes, 0);
            return bytes;
        }

        /// <summary>Reads a NUL-terminated UTF-8 string the library owns (not freed).</summary>
        public static string ReadUtf8(IntPtr p)
        {
            if (p == IntPtr.Zero) return null;
            int len = 0;
            while (Marshal.ReadByte(p, len) != 0) len++;
            return ReadUtf8(p, len);
        }

        public static string ReadUtf8(IntPtr p, int len)
        {
            if (len == 0) return string.Empty;
            var bytes = new byte[len];
            Marshal.Copy(p, bytes, 0, len);
            return Encoding.UTF8.GetString(bytes);
        }

        /// <summary>Copies and frees a string the library returned.</summary>
        public static string Take(IntPtr p)
        {
            try { return ReadUtf8(p); }
            finally { if (p != IntPtr.Zero) smallmind_string_free(p); }
        }

        private static readonly Lazy<uint> abi = new Lazy<uint>(smallmind_abi_version);
        public static uint Abi { get { return abi.Value; } }
    }
}
