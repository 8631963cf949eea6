#!/usr/bin/env bash
# Vendors the console's front-end libraries from the npm registry into the package
# (no CDN at run time): htmx and uPlot, pinned. `make vendor-ui` runs this.
set -euo pipefail
HTMX_VERSION=${HTMX_VERSION:-2.0.11}
UPLOT_VERSION=${UPLOT_VERSION:-1.6.32}
cd "$(dirname "$0")/.."
dest=src/nebula_credential/console/static
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "htmx.org@$HTMX_VERSION" "uplot@$UPLOT_VERSION" >/dev/null)
mkdir -p "$work/htmx" "$work/uplot" "$dest"
tar -xzf "$work/htmx.org-$HTMX_VERSION.tgz" -C "$work/htmx"
tar -xzf "$work/uplot-$UPLOT_VERSION.tgz" -C "$work/uplot"
cp "$work/htmx/package/dist/htmx.min.js" "$dest/htmx.min.js"
cp "$work/htmx/package/LICENSE" "$dest/LICENSE.htmx"
cp "$work/uplot/package/dist/uPlot.iife.min.js" "$dest/uPlot.iife.min.js"
cp "$work/uplot/package/dist/uPlot.min.css" "$dest/uPlot.min.css"
cp "$work/uplot/package/LICENSE" "$dest/LICENSE.uplot"
cat > "$dest/VENDORED.md" <<MD
# Vendored front-end libraries

Fetched from the npm registry by \`make vendor-ui\` (scripts/vendor-ui.sh); served by the
console from this folder, never from a CDN.

| package | version | files | license |
|---|---|---|---|
| htmx.org | $HTMX_VERSION | htmx.min.js | 0BSD (LICENSE.htmx) |
| uplot | $UPLOT_VERSION | uPlot.iife.min.js, uPlot.min.css | MIT (LICENSE.uplot) |
MD
echo "vendored htmx.org $HTMX_VERSION and uplot $UPLOT_VERSION into $dest"
