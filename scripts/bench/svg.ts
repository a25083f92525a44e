/**
 * A hand-written SVG chart: one horizontal bar per target, the measured ratio
 * (haul / peer, lower is better) on a log scale, with the target as a vertical
 * mark on the bar's row. Green bars meet their target, red ones do not.
 */

export interface Bar {
  /** Row label, e.g. "P1 wall: haul / curl". */
  label: string;
  /** The measured ratio (> 0). */
  value: number;
  /** The target: the ratio must be at most this. */
  limit: number;
  pass: boolean;
  /** Short text after the bar, e.g. "0.84 ≤ 0.9". */
  note?: string;
}

const esc = (s: string) =>
  s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll(
    '"',
    "&quot;",
  );

const fmt = (x: number) =>
  x >= 10 ? x.toFixed(0) : x >= 1 ? x.toFixed(2).replace(/0$/, "") : x.toPrecision(2);

/** Renders the chart; returns the SVG document. */
export function ratioChart(title: string, bars: Bar[], subtitle = ""): string {
  const W = 960;
  const left = 300;
  const right = 190;
  const top = subtitle ? 70 : 52;
  const rowH = 30;
  const plotW = W - left - right;
  const H = top + Math.max(1, bars.length) * rowH + 50;
  const finite = bars.flatMap((b) => [b.value, b.limit]).filter((x) => Number.isFinite(x) && x > 0);
  // Decades that hold every value and target, at least 0.05 … 2.
  let lo = Math.min(0.05, ...finite);
  let hi = Math.max(2, ...finite);
  lo = Math.pow(10, Math.floor(Math.log10(lo)));
  hi = Math.pow(10, Math.ceil(Math.log10(hi)));
  const x = (v: number) =>
    left + ((Math.log10(Math.min(hi, Math.max(lo, v))) - Math.log10(lo)) /
        (Math.log10(hi) - Math.log10(lo))) * plotW;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">${
      esc(title)
    }</text>`,
  );
  if (subtitle) {
    out.push(
      `<text x="${W / 2}" y="44" text-anchor="middle" fill="#555">${esc(subtitle)}</text>`,
    );
  }
  // Grid: 1, 2, 5 of each decade.
  const bottom = top + bars.length * rowH;
  for (let d = lo; d < hi * 1.0001; d *= 10) {
    for (const m of [1, 2, 5]) {
      const v = d * m;
      if (v > hi * 1.0001) break;
      const gx = x(v).toFixed(1);
      const strong = Math.abs(v - 1) < 1e-9;
      out.push(
        `<line x1="${gx}" y1="${top - 6}" x2="${gx}" y2="${bottom + 4}" stroke="${
          strong ? "#333" : "#ddd"
        }" stroke-width="${strong ? 1.5 : 1}"/>`,
        `<text x="${gx}" y="${bottom + 20}" text-anchor="middle" fill="#444">${fmt(v)}×</text>`,
      );
    }
  }
  out.push(
    `<text x="${left + plotW / 2}" y="${
      bottom + 40
    }" text-anchor="middle" fill="#444">haul / peer (log scale, lower is better); black tick = target</text>`,
  );
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    const ok = Number.isFinite(b.value) && b.value > 0;
    out.push(
      `<text x="${left - 8}" y="${y + rowH / 2 + 4}" text-anchor="end">${esc(b.label)}</text>`,
    );
    if (ok) {
      const w = Math.max(1, x(b.value) - left);
      out.push(
        `<rect x="${left}" y="${y + 6}" width="${w.toFixed(1)}" height="${rowH - 12}" fill="${
          b.pass ? "#3a9d4a" : "#d0453a"
        }"><title>${esc(`${b.label}: ${fmt(b.value)}×, target ≤ ${fmt(b.limit)}×`)}</title></rect>`,
      );
    } else {
      out.push(`<text x="${left + 4}" y="${y + rowH / 2 + 4}" fill="#888">not measured</text>`);
    }
    if (Number.isFinite(b.limit) && b.limit > 0) {
      const tx = x(b.limit).toFixed(1);
      out.push(
        `<line x1="${tx}" y1="${y + 2}" x2="${tx}" y2="${
          y + rowH - 2
        }" stroke="#000" stroke-width="3"/>`,
      );
    }
    const note = b.note ?? (ok ? `${fmt(b.value)}× (≤ ${fmt(b.limit)}×)` : "");
    out.push(
      `<text x="${left + plotW + 10}" y="${y + rowH / 2 + 4}" fill="${
        ok ? (b.pass ? "#1d6b2a" : "#a3261d") : "#888"
      }">${esc(note)} ${ok ? (b.pass ? "PASS" : "FAIL") : ""}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
