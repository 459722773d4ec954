;; echo: a tool plugin in WebAssembly text (plugin ABI 1, docs/plugin-abi.md). It answers
;; with its arguments unchanged: the smallest round trip through the ABI, and the plugin the
;; per-call overhead benchmark measures. It imports nothing.
(module
  (memory (export "memory") 1)
  ;; Where the next allocation goes. The host allocates once per call (the input), so each
  ;; call starts again from the bottom: nothing from the previous call is still in use.
  (global $next (mut i32) (i32.const 1024))

  (func (export "mofa_abi_version") (result i32) (i32.const 1))

  ;; Room for `len` bytes at the bottom, and for the answer (one more byte) right after it.
  (func (export "mofa_alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need (i32.add (i32.const 1025) (i32.mul (local.get $len) (i32.const 2))))
    (if (i32.gt_u (local.get $need) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub
                  (i32.shr_u (i32.add (local.get $need) (i32.const 65535)) (i32.const 16))
                  (memory.size)))
              (i32.const -1))
          (then unreachable))))
    (global.set $next (i32.const 1024))
    (global.get $next))

  ;; The answer: status 0, then the input as it came.
  (func (export "mofa_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32)
    (local.set $out (i32.add (local.get $ptr) (local.get $len)))
    (i32.store8 (local.get $out) (i32.const 0))
    (memory.copy (i32.add (local.get $out) (i32.const 1)) (local.get $ptr) (local.get $len))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
      (i64.extend_i32_u (i32.add (local.get $len) (i32.const 1)))))
)
