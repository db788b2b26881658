#!/usr/bin/env python3
"""The shape rules of docs/architecture.md, checked: no Rust source file over 600 lines, and no
circular imports between the modules of a crate (a module may use its parent and its
children; two siblings, or their subtrees, may not use each other in a circle). Unit-test
modules (`#[cfg(test)] mod ... { }`) use their siblings as fixtures and are left out.

Usage: scripts/check-shape.py [REPO]   (exit status 1 and a list of violations on failure)
"""
import os
import re
import subprocess
import sys

MAX_LINES = 600


def rust_files(repo):
    out = subprocess.run(["git", "ls-files", "*.rs"], cwd=repo, capture_output=True,
                         text=True, check=True).stdout
    return [f for f in out.split() if os.path.exists(os.path.join(repo, f))]


def crate_roots(repo, files):
    """Each crate's src/ directory (a Cargo.toml beside it)."""
    roots = set()
    for f in files:
        parts = f.split("/")
        if "src" in parts:
            i = parts.index("src")
            base = "/".join(parts[:i])
            if os.path.exists(os.path.join(repo, base, "Cargo.toml")):
                roots.add("/".join(parts[: i + 1]))
    return roots


def module_of(src, path):
    """The module path (a tuple) a file under `src` defines, or None for extra binaries."""
    rel = path[len(src) + 1:]
    parts = rel[:-3].split("/")
    if parts[0] == "bin":
        return None
    if parts[-1] in ("lib", "main") and len(parts) == 1:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def strip_test_modules(text):
    """Drops the bodies of inline `#[cfg(test)] mod name { ... }` blocks."""
    out, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < pos:
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[pos:m.start()])
        pos = i
    out.append(text[pos:])
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    depth, start, items = 0, 0, []
    i = tree.find("{")
    if i < 0:
        return [tree]
    prefix, inner = tree[:i], tree[i + 1: tree.rindex("}")]
    for j, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:j])
            start = j + 1
    items.append(inner[start:])
    return [p for item in items if item for p in expand_use(prefix + item)]


def references(text, here):
    """Absolute module paths the text names, through `crate::`, `super::` and `self::`."""
    text = strip_test_modules(strip_comments(text))
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths += expand_use(m.group(1))
    paths += [m.group(0) for m in re.finditer(r"\b(?:crate|super|self)(?:::\w+)+", text)]
    out = []
    for p in paths:
        segs = [s for s in p.split("::") if s]
        if not segs or segs[0] not in ("crate", "super", "self"):
            continue
        base = list(here)
        if segs[0] == "crate":
            base, segs = [], segs[1:]
        else:
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
        out.append(tuple(base + [s.split(" as ")[0] for s in segs]))
    return out


def find_cycle(graph):
    seen, stack, on = set(), [], set()

    def visit(n):
        seen.add(n)
        stack.append(n)
        on.add(n)
        for m in sorted(graph.get(n, ())):
            if m in on:
                return stack[stack.index(m):] + [m]
            if m not in seen:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        on.discard(n)
        return None

    for n in sorted(graph):
        if n not in seen:
            c = visit(n)
            if c:
                return c
    return None


def main():
    repo = sys.argv[1] if len(sys.argv) > 1 else "."
    files = rust_files(repo)
    bad = []
    for f in files:
        with open(os.path.join(repo, f)) as fh:
            n = sum(1 for _ in fh)
        if n > MAX_LINES:
            bad.append(f"{f}: {n} lines (at most {MAX_LINES}: split it by concept)")
    for src in sorted(crate_roots(repo, files)):
        mods = {}
        for f in files:
            if f.startswith(src + "/"):
                m = module_of(src, f)
                if m is not None:
                    mods[m] = f
        graph = {}
        for m, f in mods.items():
            with open(os.path.join(repo, f)) as fh:
                refs = references(fh.read(), m)
            for r in refs:
                while r and r not in mods:
                    r = r[:-1]
                k = 0
                while k < min(len(m), len(r)) and m[k] == r[k]:
                    k += 1
                if k == len(m) or k == len(r):
                    continue  # a parent and its descendant
                a, b = m[: k + 1], r[: k + 1]
                graph.setdefault(a, set()).add(b)
        cycle = find_cycle(graph)
        if cycle:
            names = " -> ".join("::".join(c) for c in cycle)
            bad.append(f"{src}: modules import each other in a circle: {names}")
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
