"""What headless Chromium lays out: a page framed at a given width, probed from inside the browser."""

from __future__ import annotations

import html
import re
import shutil
import subprocess

# Run in a page that frames the report at a given width, once the frame has loaded: the frame document's
# scrollWidth, the smallest computed font size of its body text, the width of the widest table, and one line per
# figure with the size the browser decoded it to. The element's id is assembled at run time, so the script's own
# text never matches it.
_PROBE = """<script>document.getElementById("framed").addEventListener("load", () => {
  const doc = document.getElementById("framed").contentDocument;
  const sizes = [...doc.images].map(i => `${i.complete}:${i.naturalWidth}x${i.naturalHeight}`);
  const widest = Math.max(0, ...[...doc.querySelectorAll("table")].map(t => t.getBoundingClientRect().width));
  const text = [doc.body, ...doc.querySelectorAll("p, li, td, th")];
  const font = Math.min(...text.map(e => parseFloat(doc.defaultView.getComputedStyle(e).fontSize)));
  const out = document.createElement("pre");
  out.id = ["probe", "result"].join("-");
  out.textContent = `${doc.documentElement.scrollWidth} ${font} ${Math.ceil(widest)} ${sizes.join(" ")}`;
  document.body.appendChild(out);
});</script>"""


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def probe_page(page: str, tmp_path, *, width: int = 1280) -> dict:
    """The page as Chromium lays it out in a ``width``-px frame (headless windows are at least 500 px wide, so a
    phone's width is a frame's): its scrollWidth, smallest body-text font size, widest table and figure sizes."""
    return _probe(f'srcdoc="{html.escape(page)}"', tmp_path, width)


def probe_file(path, tmp_path, *, width: int = 1280) -> dict:
    """As :func:`probe_page`, for a page on disk with what it links (images, style sheets) beside it."""
    return _probe(f'src="{path.resolve().as_uri()}"', tmp_path, width)


def _probe(source: str, tmp_path, width: int) -> dict:
    probed = tmp_path / f"probe-{width}.html"
    probed.write_text(f'<!doctype html><html><body style="margin:0"><iframe id="framed" width="{width}" height="900" '
                      f'style="border:0" {source}></iframe>{_PROBE}</body></html>')
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--disable-background-networking", "--disable-component-update", "--no-first-run",
                          f"--window-size={width + 100},1000", "--virtual-time-budget=10000", "--dump-dom",
                          probed.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe-result">([^<]*)</pre>', dom)
    assert found, f"the frame's load handler did not run; Chromium printed: {dom[-2000:]}"
    scroll, font, widest, *sizes = found.group(1).split()
    return {"scroll_width": int(scroll), "font_px": float(font), "widest_table": int(widest), "figures": sizes}


