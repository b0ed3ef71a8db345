#!/usr/bin/env bash
# Checks the documentation: README.md and the book in docs/ (every docs/**/*.md).
#
#   bash docs/check.sh [BINARY]      (BINARY defaults to target/release/ingest-bridge)
#
# 1. Links. Every relative Markdown link, inline `[text](target)` or a reference definition
#    `[name]: target`, outside code blocks and code spans, points to a file or directory
#    that exists (relative to the page). Every `#anchor` into a Markdown file (or into the
#    page itself) matches one of its headings, slugged as GitHub does: the heading's text
#    without Markdown markup, lower case, characters other than letters, digits, spaces,
#    '-' and '_' removed, spaces turned into '-', and "-1", "-2", … added to repeated
#    slugs. Explicit `<a name="…">` / `id="…"` anchors count too. Links with a scheme
#    (https:, mailto:, …) are not checked. One check per Markdown file.
# 2. Configs. Every ```toml block that is a complete config, i.e. that has a `[server]`,
#    `[storage]` or `[[users]]` table header of its own, is written to a temporary file and
#    must pass `BINARY check-config --config FILE`, run in an empty temporary directory.
#    Smaller blocks (`[ftp.tls]`, `[notify.create]`, …) are fragments to paste into a
#    config and are not checked. A `${NAME}` the block refers to that is not set in the
#    environment gets a dummy value (https://example.com/dummy-NAME), so blocks that take
#    secrets from the environment still validate. One check per block.
#
# Needs bash and python3; takes well under a second plus one check-config per block.
# Ends with one "docs: N passed, N failed" line and exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-target/release/ingest-bridge}
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac

python3 - "$BIN" <<'PY'
import os, re, subprocess, sys, tempfile
from pathlib import Path

BIN = sys.argv[1]
ROOT = Path.cwd()
FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)')

passed = failed = 0


def result(ok, name, problems=()):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok      {name}")
    else:
        failed += 1
        print(f"FAILED  {name}")
        for p in problems:
            print(f"          {p}")


def blocks_and_text(text):
    """Yield ('text', lineno, line) outside fences and ('block', lineno, info, body)."""
    lines = text.split('\n')
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            yield ('text', i + 1, lines[i])
            i += 1
            continue
        marker, info, start = m.group(1), m.group(2).lower(), i + 1
        body = []
        i += 1
        while i < len(lines) and not (lines[i].lstrip().startswith(marker[0] * len(marker))
                                      and lines[i].strip().strip(marker[0]) == ''):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        yield ('block', start, info, '\n'.join(body) + '\n')


def slug(heading):
    s = heading.strip()
    s = re.sub(r'\s+#+\s*$', '', s)                      # closing hashes
    s = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', s)      # links and images: their text
    s = re.sub(r'<[^>]+>', '', s)                         # inline HTML tags
    s = s.replace('`', '').replace('*', '')               # code spans, emphasis
    s = re.sub(r'(?<!\w)_+|_+(?!\w)', '', s)              # _emphasis_, not snake_case
    s = s.lower()
    s = ''.join(c for c in s if c.isalnum() or c in ' -_')
    return s.replace(' ', '-')


_anchors = {}


def anchors(path):
    if path not in _anchors:
        found, seen = set(), {}
        for item in blocks_and_text(path.read_text(encoding='utf-8')):
            if item[0] != 'text':
                continue
            line = item[2]
            m = re.match(r'^ {0,3}#{1,6}\s+(.*)$', line)
            if m:
                base = slug(m.group(1))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
            for a in re.findall(r'<a\s+(?:name|id)="([^"]+)"', line) + re.findall(r'\sid="([^"]+)"', line):
                found.add(a)
        _anchors[path] = found
    return _anchors[path]


LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
REFDEF = re.compile(r'^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$')


def check_links(md):
    problems, count = [], 0
    for item in blocks_and_text(md.read_text(encoding='utf-8')):
        if item[0] != 'text':
            continue
        _, lineno, line = item
        text = re.sub(r'(`+)(?:(?!\1).)+\1', '', line)   # drop code spans
        targets = LINK.findall(text)
        m = REFDEF.match(text)
        if m:
            targets.append(m.group(1))
        for target in targets:
            if re.match(r'^[A-Za-z][A-Za-z0-9+.-]*:', target) or target.startswith('//'):
                continue
            count += 1
            path_part, _, anchor = target.partition('#')
            path_part = path_part.split('?')[0]
            dest = (md.parent / path_part).resolve() if path_part else md.resolve()
            where = f"{md.relative_to(ROOT)}:{lineno}: ({target})"
            if not dest.exists():
                problems.append(f"{where} no such file: {path_part}")
                continue
            if anchor and dest.is_file() and dest.suffix == '.md':
                if anchor not in anchors(dest):
                    problems.append(f"{where} no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}")
    return count, problems


HEADER = re.compile(r'^\s*(\[server\]|\[storage\]|\[\[users\]\])\s*(#.*)?$', re.M)
VAR = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}')


def check_configs(md, workdir):
    for item in blocks_and_text(md.read_text(encoding='utf-8')):
        if item[0] != 'block' or item[2] != 'toml':
            continue
        _, lineno, _, body = item
        if not HEADER.search(body):
            continue
        name = f"config {md.relative_to(ROOT)}:{lineno}"
        cfg = Path(workdir) / f"block-{lineno}.toml"
        cfg.write_text(body, encoding='utf-8')
        env = dict(os.environ)
        env.pop('INGEST_BRIDGE_CONFIG', None)
        for k in [k for k in env if k.startswith('INGEST_BRIDGE__')]:
            del env[k]
        for var in VAR.findall(body.replace('$${', '')):
            if not env.get(var):
                env[var] = f"https://example.com/dummy-{var}"
        try:
            p = subprocess.run([BIN, 'check-config', '--config', str(cfg)], cwd=workdir, env=env,
                               capture_output=True, text=True, timeout=60)
            out = (p.stdout + p.stderr).strip().split('\n')
            result(p.returncode == 0, name, out if p.returncode else ())
        except (OSError, subprocess.TimeoutExpired) as e:
            result(False, name, [f"{BIN} check-config: {e}"])


files = [ROOT / 'README.md'] + sorted(p for p in (ROOT / 'docs').rglob('*.md'))
for md in files:
    n, problems = check_links(md)
    result(not problems, f"links {md.relative_to(ROOT)} ({n} relative)", problems)

if not os.access(BIN, os.X_OK):
    result(False, "configs", [f"{BIN} is missing or not executable: build it (cargo build --release) or pass its path"])
else:
    with tempfile.TemporaryDirectory(prefix='docs-check.') as workdir:
        for md in files:
            check_configs(md, workdir)

print(f"docs: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
