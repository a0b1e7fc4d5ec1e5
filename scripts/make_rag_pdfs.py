#!/usr/bin/env python3
"""Regenerates the PDF fixtures of the RAG test corpus (node/tests/data/rag/).

Standard library only. Writes, byte for byte the same on every run:

* balcony-solar-power.pdf - a 3-page PDF 1.4 with a real text layer
  (Helvetica, WinAnsiEncoding, uncompressed content streams);
* scanned.pdf - a 1-page PDF whose only content is a drawn rectangle, i.e.
  no text layer at all; the ingester must refuse it.

The PDF is written by hand: catalog, page tree, one page object per page,
one content stream per page, a font resource, and an xref table whose
offsets are the exact byte positions of each `N 0 obj`.

Usage: python3 scripts/make_rag_pdfs.py
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "node", "tests", "data", "rag")

PAGE_W, PAGE_H = 595, 842  # A4 in points
MARGIN = 72
BODY_SIZE = 11
HEAD_SIZE = 14
LEADING = 15
TITLE_SIZE = 18

# Helvetica advance widths (1/1000 em) for codes 32..126, from the standard
# font metrics. Used for line wrapping and for the /Widths array.
HELVETICA_WIDTHS = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,  # ' '../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556,  # 0-9
    278, 278, 584, 584, 584, 556, 1015,  # : ; < = > ? @
    667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833,  # A-M
    722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611,  # N-Z
    278, 278, 278, 469, 556, 333,  # [ \ ] ^ _ `
    556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833,  # a-m
    556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500,  # n-z
    334, 260, 334, 584,  # { | } ~
]
assert len(HELVETICA_WIDTHS) == 95


def text_width(text: str, size: float) -> float:
    total = 0
    for ch in text:
        code = ord(ch)
        total += HELVETICA_WIDTHS[code - 32] if 32 <= code <= 126 else 556
    return total * size / 1000.0


def wrap(text: str, size: float, width: float) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = word if not current else current + " " + word
        if current and text_width(candidate, size) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def escape(text: str) -> str:
    """Escapes a string for a PDF literal string: backslash and parentheses."""
    for ch in text:
        if not (32 <= ord(ch) <= 126):
            raise ValueError(f"non-ASCII character {ch!r} in PDF text; keep the source ASCII")
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


# --------------------------------------------------------------------------
# Document content. Each page is a list of blocks: ("title", text),
# ("h", heading), ("p", paragraph) or ("li", list item). A page that
# overflows continues on a new page automatically; the explicit page lists
# below keep the battery sizing on page 2.
# --------------------------------------------------------------------------

SOLAR_TITLE = "A Small Solar Setup for a Balcony: Panel and Battery Sizing"

SOLAR_PAGES = [
    [
        ("title", SOLAR_TITLE),
        ("p", "Notes from the Repair Cafe energy table. Page 1 covers planning, page 2 "
              "the arithmetic for the battery and the panel, page 3 wiring, safety and upkeep."),
        ("h", "1. What a balcony system is"),
        ("p", "A balcony system is a deliberately modest off-grid kit: one or two panels "
              "clipped to a railing or leaning against a sunny wall, a charge controller, a "
              "battery, and a few low-voltage loads such as LED lamps, phone chargers, a "
              "Wi-Fi router or a radio. It will not run a kettle or a washing machine, but "
              "it can keep the lights, the internet and the news going through a power cut, "
              "and it trims a little off the electricity bill the rest of the time."),
        ("p", "Some countries also allow small plug-in inverters that feed a balcony panel "
              "straight into a household socket. That is a different kind of system with "
              "its own rules and registration, and it usually stops working during a power "
              "cut. These notes are about the stand-alone kind with its own battery."),
        ("h", "2. Start with what you want to power"),
        ("p", "Sizing always begins with the loads, not with the panel. Write down every "
              "device, its power in watts (printed on the label or the power adapter) and "
              "how many hours a day it runs. Multiply the two to get watt-hours (Wh) per day, "
              "then add them up. A typical list for one flat looks like this:"),
        ("li", "Two LED lamps, 5 W each, 5 hours a day: 50 Wh"),
        ("li", "Wi-Fi router, 8 W, 24 hours a day: 192 Wh"),
        ("li", "Phone and tablet charging: about 30 Wh"),
        ("li", "Small radio, 3 W, 4 hours a day: 12 Wh"),
        ("li", "Total: about 284 Wh per day"),
        ("p", "Round the total up to 300 Wh per day to leave a margin for devices that use "
              "more than their label suggests and for the losses in cables and chargers. If "
              "the list comes to several thousand watt-hours, a balcony system is the wrong "
              "tool; cut the list down to the essentials instead."),
        ("h", "3. Where the panel will go"),
        ("p", "A panel facing south (in the northern hemisphere) and tilted at an angle close "
              "to your latitude collects the most over the year. A steep tilt, even vertical "
              "on a railing, loses some summer output but does better in winter, when the sun "
              "is low and power matters most. Shade is the enemy: a shadow across even a few "
              "cells can cut the output of the whole panel by half or more, so watch where "
              "the shadows of balconies above, trees and railings fall at different times "
              "of day before fixing anything."),
    ],
    [
        ("h", "4. Sizing the battery"),
        ("p", "The battery has to carry you through the night and through dull days when the "
              "panel produces little. Three numbers decide its size: your daily use, how "
              "many days you want to cover without sun (called days of autonomy), and how "
              "much of the battery's nameplate capacity you can actually use."),
        ("p", "Not every watt-hour printed on a battery is usable. Lead-acid batteries should "
              "only be discharged to about 50 percent if they are to last, while lithium iron "
              "phosphate (LiFePO4) batteries can safely use about 80 to 90 percent of their "
              "rating and last thousands of cycles. That fraction is the usable capacity. "
              "Also allow for about 10 percent lost in charging and in the inverter or "
              "converters."),
        ("p", "The formula is: battery size in Wh = daily use x days of autonomy / (usable "
              "fraction x efficiency). For the example list of 300 Wh per day, with one and a "
              "half days of autonomy and a LiFePO4 battery:"),
        ("li", "300 Wh x 1.5 days = 450 Wh to be delivered"),
        ("li", "450 Wh / (0.85 usable x 0.9 efficiency) = about 590 Wh of nameplate capacity"),
        ("li", "At 12.8 V nominal, 590 Wh / 12.8 V = about 46 Ah, so a 12 V 50 Ah LiFePO4 battery fits"),
        ("p", "The same job with lead-acid would need roughly 590 x 0.85 / 0.5 = 1000 Wh, or "
              "about 85 Ah at 12 V, and would weigh three times as much. For a balcony, "
              "where every kilogram has to be carried up the stairs and the space is small, "
              "lithium iron phosphate is nearly always the better choice."),
        ("p", "One warning about cold: most LiFePO4 batteries must not be charged below "
              "0 degrees Celsius. Keep the battery indoors, on the warm side of the window, "
              "and run the cable through a window seal or a small drilled hole."),
        ("h", "5. Sizing the panel"),
        ("p", "The panel must put back each day what you take out. Solar output is estimated "
              "with peak sun hours: the number of hours of full-strength sunlight the day's "
              "light is equivalent to. In much of northern and central Europe that is about "
              "4 to 5 hours in June but only 1 to 1.5 hours in December, and a vertical "
              "balcony panel gets less than a roof."),
        ("p", "Panel watts = daily use / (peak sun hours x 0.75). The factor of 0.75 covers "
              "heat, dirt, cable and controller losses. For 300 Wh per day with 3 peak sun "
              "hours in spring and autumn: 300 / (3 x 0.75) = about 133 W, so a single panel "
              "of 150 to 200 W is a sensible size. In midwinter the same panel will not keep "
              "up; accept that, cut the loads, or top up from the mains when it is available."),
    ],
    [
        ("h", "6. Charge controller and wiring"),
        ("p", "Use an MPPT charge controller rated for your panel's open-circuit voltage and "
              "for the battery chemistry; set it to the LiFePO4 profile if that is what you "
              "bought. Connect the controller to the battery first and the panel second, and "
              "disconnect in the reverse order. Put a fuse in the positive lead as close to "
              "the battery as possible, sized for the cable, and use cable thick enough that "
              "it stays cool: for a 12 V system even modest currents need 4 or 6 square "
              "millimetre cable over a few metres."),
        ("h", "7. Fixing the panel safely"),
        ("p", "A panel is a sail. Fix it with proper brackets or straps to something solid, "
              "never just lean it loose over the edge, and check with the landlord or the "
              "building association before drilling. Make sure nothing can fall onto the "
              "pavement below in a storm."),
        ("h", "8. Upkeep"),
        ("p", "Rinse dust and bird droppings off the glass with plain water and a soft "
              "brush every few months; do not use abrasive cleaners or a pressure washer. "
              "Check the connectors for corrosion each autumn, and look at the battery "
              "monitor now and then to learn how your daily use really compares with the "
              "estimate you started from."),
        ("h", "Checklist"),
        ("li", "List the loads and add up the watt-hours per day."),
        ("li", "Size the battery, then the panel."),
        ("li", "Fuse the battery, keep it indoors and above freezing."),
        ("li", "Fix the panel securely and keep it out of shade."),
    ],
]


def layout(pages: list[list[tuple[str, str]]]) -> list[list[tuple[int, str]]]:
    """Turns blocks into pages of (font size, line) with "" as a blank line."""
    usable_w = PAGE_W - 2 * MARGIN
    max_lines_h = PAGE_H - 2 * MARGIN
    out: list[list[tuple[int, str]]] = []
    for blocks in pages:
        page: list[tuple[int, str]] = []
        height = 0.0

        def emit(size: int, line: str) -> None:
            nonlocal page, height
            if height + LEADING > max_lines_h:
                out.append(page)
                page, height = [], 0.0
            page.append((size, line))
            height += LEADING

        for kind, text in blocks:
            if kind == "title":
                for line in wrap(text, TITLE_SIZE, usable_w):
                    emit(TITLE_SIZE, line)
                emit(BODY_SIZE, "")
            elif kind == "h":
                if page:
                    emit(BODY_SIZE, "")
                for line in wrap(text, HEAD_SIZE, usable_w):
                    emit(HEAD_SIZE, line)
            elif kind == "p":
                for line in wrap(text, BODY_SIZE, usable_w):
                    emit(BODY_SIZE, line)
                emit(BODY_SIZE, "")
            elif kind == "li":
                for i, line in enumerate(wrap(text, BODY_SIZE, usable_w - 14)):
                    emit(BODY_SIZE, ("- " if i == 0 else "  ") + line)
            else:
                raise ValueError(kind)
        out.append(page)
    return out


def text_stream(lines: list[tuple[int, str]], page_no: int, page_count: int) -> bytes:
    """One BT/ET block per line, each placed absolutely: robust for extractors."""
    ops: list[str] = []
    y = PAGE_H - MARGIN - TITLE_SIZE
    for size, line in lines:
        if line.strip():
            ops.append(f"BT /F1 {size} Tf {MARGIN} {y:.0f} Td ({escape(line)}) Tj ET")
        y -= LEADING
    footer = f"Balcony solar notes - page {page_no} of {page_count}"
    ops.append(f"BT /F1 9 Tf {MARGIN} {MARGIN // 2} Td ({escape(footer)}) Tj ET")
    return ("\n".join(ops) + "\n").encode("ascii")


def build_pdf(objects: list[bytes]) -> bytes:
    """Objects are numbered 1..n in order; object 1 must be the catalog."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode("ascii") + body + b"\nendobj\n"
    xref_at = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode("ascii")
    out += b"0000000000 65535 f \n"
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode("ascii")
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n".encode("ascii")
    return bytes(out)


def stream_object(data: bytes) -> bytes:
    return f"<< /Length {len(data)} >>\nstream\n".encode("ascii") + data + b"endstream"


def text_pdf(pages: list[list[tuple[str, str]]], title: str) -> bytes:
    laid = layout(pages)
    n = len(laid)
    # 1 catalog, 2 pages, 3 font, 4 info, then (page, content) pairs.
    page_ids = [5 + 2 * i for i in range(n)]
    widths = " ".join(str(w) for w in HELVETICA_WIDTHS)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {n} >>".encode("ascii"),
        (
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding "
            f"/FirstChar 32 /LastChar 126 /Widths [{widths}] >>"
        ).encode("ascii"),
        f"<< /Title ({escape(title)}) /Producer (HearthNet scripts/make_rag_pdfs.py) >>".encode("ascii"),
    ]
    for i, lines in enumerate(laid):
        objects.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
                f"/Resources << /Font << /F1 3 0 R >> /ProcSet [/PDF /Text] >> "
                f"/Contents {page_ids[i] + 1} 0 R >>"
            ).encode("ascii")
        )
        objects.append(stream_object(text_stream(lines, i + 1, n)))
    pdf = bytearray(build_pdf(objects))
    # Put /Info in the trailer (build_pdf writes only /Root).
    pdf = bytes(pdf).replace(b"/Root 1 0 R >>", b"/Root 1 0 R /Info 4 0 R >>")
    return pdf


def scanned_pdf() -> bytes:
    """One page, a filled grey rectangle and a stroked frame: no text at all."""
    content = (
        b"q\n0.85 g\n72 400 451 300 re\nf\n0 G\n2 w\n72 400 451 300 re\nS\n"
        b"0.4 g\n100 600 200 40 re\nf\nQ\n"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
        f"/Resources << /ProcSet [/PDF] >> /Contents 4 0 R >>".encode("ascii"),
        stream_object(content),
    ]
    return build_pdf(objects)


def main() -> int:
    os.makedirs(OUT_DIR, exist_ok=True)
    outputs = {
        "balcony-solar-power.pdf": text_pdf(SOLAR_PAGES, SOLAR_TITLE),
        "scanned.pdf": scanned_pdf(),
    }
    for name, data in outputs.items():
        path = os.path.normpath(os.path.join(OUT_DIR, name))
        with open(path, "wb") as f:
            f.write(data)
        print(f"wrote {path} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
