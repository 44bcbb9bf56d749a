#!/usr/bin/env bash
# Render the demo cost report (synthetic usage: six hours of five adapters on one H100) in
# headless Chromium and check the screenshot shows its charts.
#
#   scripts/report_screenshot.sh [OUT.png]      # default: docs/img/cost-report.png
#
# Installs Debian's `chromium` with apt-get when no chromium is on PATH (needs root); set
# CHROMIUM=/path/to/chrome to use another build. The HTML goes next to the PNG when KEEP_HTML=1,
# else to a temporary directory. Exits non-zero when the PNG looks blank: it must be > 20 KB,
# 1280 px wide, with more than 200 distinct colours and the chart colours of the report present
# (decoded here with zlib, no PIL needed). tests/billing/test_report_html_chromium.py runs it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/docs/img/cost-report.png}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"

CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
if [ -z "$CHROMIUM" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "no chromium on PATH; install it (Debian: apt-get install chromium) or set CHROMIUM" >&2
        exit 2
    fi
    echo "installing chromium with apt-get (a few minutes)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
    CHROMIUM="$(command -v chromium)"
fi

if [ "${KEEP_HTML:-0}" = 1 ]; then
    HTML="${OUT%.png}.html"
else
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    HTML="$TMP/cost-report.html"
fi

cd "$ROOT"
"$PYTHON" -m slfaas.billing.report_demo --demo "$HTML" >&2
rm -f "$OUT"
# --no-sandbox: Chromium refuses to run as root with its sandbox (containers, CI).
timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --screenshot="$OUT" --window-size=1280,2000 "file://$HTML" >/dev/null 2>&1 || true
[ -s "$OUT" ] || { echo "chromium wrote no screenshot to $OUT" >&2; exit 1; }

"$PYTHON" - "$OUT" <<'EOF'
"""Decode the PNG (8-bit RGB/RGBA, not interlaced: what Chromium writes) and check it."""
import struct, sys, zlib

path = sys.argv[1]
data = open(path, "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, width = 8, b"", 0
while pos < len(data):
    (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
    body = data[pos + 8:pos + 8 + length]
    if kind == b"IHDR":
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {depth=} {colour=}"
        bpp = 3 if colour == 2 else 4
    elif kind == b"IDAT":
        idat += body
    pos += 12 + length
raw, stride = zlib.decompress(idat), width * bpp
prev, colours, pixels = bytearray(stride), set(), []
for y in range(height):
    f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prev[i], prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp))
    prev = line
# chart colours of report_html: compute (blue), serverful/init (red), no-sharing (orange)
need = {"compute blue": (0x4e, 0x79, 0xa7), "red": (0xe1, 0x57, 0x59), "orange": (0xf2, 0x8e, 0x2b)}
missing = [k for k, rgb in need.items() if bytes(rgb) not in colours]
size = len(data)
print(f"{path}: {width}x{height}, {size // 1024} KB, {len(colours)} distinct colours")
problems = []
if size <= 20 * 1024: problems.append("smaller than 20 KB")
if width != 1280: problems.append(f"width {width}, expected 1280")
if len(colours) <= 200: problems.append(f"only {len(colours)} colours")
if missing: problems.append(f"chart colours missing: {', '.join(missing)}")
if problems:
    sys.exit("screenshot looks wrong: " + "; ".join(problems))
EOF
echo "ok: $OUT"
