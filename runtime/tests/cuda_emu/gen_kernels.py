#!/usr/bin/env python3
"""Builds kernels.h for the CUDA CPU emulator (runtime/tests/cuda_emu/, driven by
runtime/tests/cuda_emu.rs) from the real kernel sources: kernels/src/cuda_prelude.cuh followed by
every kernels/src/<op>/<op>.cu, sorted by family name, each under a `// ---- <op>.cu` marker.

    python3 gen_kernels.py KERNELS_SRC_DIR OUT_FILE

The sources are copied verbatim except for these rewrites, the only ones the emulator needs:
  * `extern "C" __global__`           -> ` __global__` (emu.h defines __global__ as nothing);
  * `extern __shared__ T name[];`      -> `T* name = (T*)g_dyn.data();` (dynamic shared memory: the
                                          launch's smem bytes, pre-filled with NaN per block);
  * the one inline-PTX block the kernels use, `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`
    with operands c[0..3], a0..a3, b0, b1 -> `emu_mma(c, a0, a1, a2, a3, b0, b1);` (emu.h).

What the emulator covers and what it cannot see is in emu.h's header. This script fails (exit 1,
one line per problem) on any construct it cannot translate or the emulator does not model, so a
kernel change cannot silently escape emulation: any other `asm` block, an `extern __shared__` it
cannot parse, a CUDA identifier `__xxx` that emu.h does not implement (e.g. __ldg, __expf,
__shfl_down_sync, __constant__), atomics other than atomicCAS, cooperative groups, textures, #include, and 2-D/3-D
thread blocks (threadIdx.y/z, blockDim.y/z: emu.h launches 1-D blocks). Supporting a new construct
means teaching emu.h to emulate it faithfully and adding it to SUPPORTED below.

Python 3 standard library only.
"""
import pathlib
import re
import sys

# CUDA identifiers of the form __xxx that emu.h implements (or that are plain C++ / compiler
# keywords with the same meaning on the CPU).
SUPPORTED = {
    "__global__", "__device__", "__forceinline__", "__launch_bounds__", "__align__", "__shared__",
    "__restrict__", "__CUDA_ARCH__", "__syncthreads", "__shfl_sync", "__shfl_xor_sync",
    "__int_as_float", "__uint_as_float", "__float_as_uint", "__fsqrt_rn", "__fdiv_rn", "__trap",
}

MMA_ASM = re.compile(
    r'asm\s+volatile\s*\(\s*'
    r'"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32\s+'
    r'\{%0,\s*%1,\s*%2,\s*%3\},\s*\{%4,\s*%5,\s*%6,\s*%7\},\s*\{%8,\s*%9\},\s*\{%0,\s*%1,\s*%2,\s*%3\};\\n"\s*'
    r':\s*"\+f"\((\w+)\[0\]\),\s*"\+f"\(\1\[1\]\),\s*"\+f"\(\1\[2\]\),\s*"\+f"\(\1\[3\]\)\s*'
    r':\s*"r"\((\w+)\),\s*"r"\((\w+)\),\s*"r"\((\w+)\),\s*"r"\((\w+)\),\s*"r"\((\w+)\),\s*"r"\((\w+)\)\s*'
    r'\)\s*;'
)
EXTERN_SHARED = re.compile(r'extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_]\w*)\s+([A-Za-z_]\w*)\s*\[\s*\]\s*;')
EXTERN_C_GLOBAL = re.compile(r'extern\s+"C"\s+__global__')

# Constructs with no faithful emulation: (pattern, why).
FORBIDDEN = [
    (re.compile(r'\basm\b'), "an inline-asm block the generator does not know (only the bf16 m16n8k16 mma.sync is emulated)"),
    (re.compile(r'extern\s+__shared__'), "an `extern __shared__` declaration the generator cannot parse"),
    # atomicCAS is emulated (std::atomic_ref: faithful within a block; blocks run one after another)
    (re.compile(r'\batomic(?!CAS\b)[A-Z]\w*\s*\('), "atomics other than atomicCAS (not emulated: one block runs at a time, races would be invisible)"),
    (re.compile(r'\bcooperative_groups\b|\bcg::'), "cooperative groups"),
    (re.compile(r'\btex[123]D\w*\b|\btexture\s*<|\bsurf[123]D\w*\b'), "textures / surfaces"),
    (re.compile(r'^\s*#\s*include\b', re.M), "#include (kernels must be self-contained)"),
    (re.compile(r'\b(?:threadIdx|blockDim)\s*\.\s*[yz]\b'), "2-D/3-D thread blocks (emu.h launches 1-D blocks)"),
    (re.compile(r'\bextern\s+"C"'), "`extern \"C\"` on something other than a __global__ kernel"),
]


def strip_comments(src):
    """Comments blanked (newlines kept, so line numbers hold); string literals kept."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(c if c == "\n" else " " for c in src[i:j]))
            i = j
        elif src[i] == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        else:
            out.append(src[i])
            i += 1
    return "".join(out)


def translate(name, src, errors):
    # The rewrites match on the comment-stripped text and apply to the original: a match that
    # overlaps a comment is left alone (and then reported by the checks below).
    def sub(pattern, repl, text):
        pieces, last = [], 0
        stripped = strip_comments(text)
        for m in pattern.finditer(stripped):
            if text[m.start():m.end()] != m.group(0):
                continue  # the match overlaps a comment: leave it, the checks below will see it
            pieces.append(text[last:m.start()])
            pieces.append(repl(m))
            last = m.end()
        pieces.append(text[last:])
        return "".join(pieces)

    src = sub(MMA_ASM, lambda m: "emu_mma({}, {}, {}, {}, {}, {}, {});".format(*m.groups()), src)
    src = sub(EXTERN_SHARED, lambda m: "{0}* {1} = reinterpret_cast<{0}*>(g_dyn.data());".format(m.group(1), m.group(2)), src)
    src = sub(EXTERN_C_GLOBAL, lambda m: " __global__", src)
    code = strip_comments(src)
    for pat, why in FORBIDDEN:
        for m in pat.finditer(code):
            line = code.count("\n", 0, m.start()) + 1
            errors.append(f"{name}:{line}: {why}: `{m.group(0).strip()}`")
    for m in re.finditer(r'\b__\w+', re.sub(r'"(?:[^"\\]|\\.)*"', '""', code)):
        if m.group(0) not in SUPPORTED:
            line = code.count("\n", 0, m.start()) + 1
            errors.append(f"{name}:{line}: `{m.group(0)}` is not emulated by emu.h (add it there and to SUPPORTED in gen_kernels.py)")
    return src


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: gen_kernels.py KERNELS_SRC_DIR OUT_FILE")
    src_dir, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    prelude = src_dir / "cuda_prelude.cuh"
    sources = sorted(src_dir.glob("*/*.cu"))
    errors = []
    if not prelude.is_file():
        errors.append(f"{prelude}: missing")
    if not sources:
        errors.append(f"{src_dir}: no */*.cu kernel sources")
    parts = ['// GENERATED by runtime/tests/cuda_emu/gen_kernels.py from kernels/src: do not edit.\n#include "emu.h"\n']
    if prelude.is_file():
        parts.append(translate("cuda_prelude.cuh", prelude.read_text(), errors) + "\n")
    for f in sources:
        parts.append(f"// ---- {f.name}\n" + translate(f"{f.parent.name}/{f.name}", f.read_text(), errors) + "\n")
    if errors:
        print(f"gen_kernels.py: {len(errors)} construct(s) the CUDA CPU emulator cannot translate:", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        sys.exit(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts))
    print(f"gen_kernels.py: {out} from {len(sources)} kernel sources + prelude")


if __name__ == "__main__":
    main()
