"""Reports people would rather look at than read: candidate grids, ``report.html``, compare.

Everything is rendered with PIL and numpy (no matplotlib) and the HTML is one static page that
references images by relative paths, so a run directory can be copied anywhere and opened
offline.
"""
from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lotts.runs.files import write_bytes_atomic
from lotts.runs.manifest import Manifest, RunDirectory

# Anchors of an inferno-like colormap (dark -> bright), interpolated linearly.
_COLORMAP_ANCHORS = np.array([
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
    [250, 193, 39], [252, 255, 164],
], dtype=np.float64)

TILE = 160          # pixels per grid tile (images are resized to fit)
CAPTION = 30        # pixels of caption under each tile
SELECTED_RGB = (40, 200, 90)
OUTLINE_RGB = (0, 240, 255)


def _font(size: int = 11) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


# --------------------------------------------------------------------------------------------
# Heatmaps and masks
# --------------------------------------------------------------------------------------------
def as_2d(values: Any) -> np.ndarray:
    """A latent-resolution map (tensor or array, any leading singleton/channel dims) as 2-D
    float64; extra channels are averaged."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    while array.ndim > 2:
        array = array.mean(axis=0)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {array.shape}")
    return array


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values to uint8 RGB with the inferno-like ramp, min-max normalized first."""
    low, high = float(np.min(values)), float(np.max(values))
    unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    position = unit * (len(_COLORMAP_ANCHORS) - 1)
    index = np.clip(np.floor(position).astype(int), 0, len(_COLORMAP_ANCHORS) - 2)
    weight = (position - index)[..., None]
    rgb = _COLORMAP_ANCHORS[index] * (1 - weight) + _COLORMAP_ANCHORS[index + 1] * weight
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def heatmap_image(heatmap: Any, size: tuple[int, int]) -> Image.Image:
    """The heatmap in colour, upsampled bilinearly to ``size`` (width, height)."""
    small = Image.fromarray(colormap(as_2d(heatmap)), "RGB")
    return small.resize(size, Image.Resampling.BILINEAR)


def mask_image(mask: Any, size: tuple[int, int]) -> Image.Image:
    """The (binary or soft) mask as a grayscale image, upsampled with nearest neighbours so
    latent cells stay visible."""
    values = np.clip(as_2d(mask), 0.0, 1.0)
    return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L").resize(size, Image.Resampling.NEAREST)


def _outline(inside: np.ndarray) -> np.ndarray:
    """Pixels of ``inside`` that touch the outside (4-neighbourhood), thickened by one pixel."""
    padded = np.pad(inside, 1, mode="edge")
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    edge = inside & ~interior
    thick = np.pad(edge, 1)
    return thick[:-2, 1:-1] | thick[2:, 1:-1] | thick[1:-1, :-2] | thick[1:-1, 2:] | edge


def overlay(parent: Image.Image, heatmap: Any = None, mask: Any = None,
            heat_alpha: float = 0.45) -> Image.Image:
    """The parent with the heatmap blended in, the outside of the mask dimmed and its border
    drawn: where the refinement was allowed to change the picture, and why."""
    base = np.asarray(parent.convert("RGB"), dtype=np.float64)
    size = parent.size
    if heatmap is not None:
        heat = np.asarray(heatmap_image(heatmap, size), dtype=np.float64)
        base = (1 - heat_alpha) * base + heat_alpha * heat
    if mask is not None:
        inside = np.asarray(mask_image(mask, size)) >= 128
        base = np.where(inside[..., None], base, base * 0.55)
        base[_outline(inside)] = OUTLINE_RGB
    return Image.fromarray(np.clip(np.rint(base), 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# Candidate grid
# --------------------------------------------------------------------------------------------
def _root(candidates: Sequence[Any], index: int) -> int:
    while candidates[index].parent is not None:
        index = int(candidates[index].parent)
    return index


def _layout(candidates: Sequence[Any]) -> list[list[tuple[str, int]]]:
    """Rows of (kind, candidate index): one row per original with, for each refinement below
    it, its parent overlay then the refinement. Without refinements, a near-square grid."""
    originals = [i for i, c in enumerate(candidates) if c.parent is None]
    if len(originals) == len(candidates):
        columns = max(1, math.ceil(math.sqrt(len(candidates))))
        cells = [("image", i) for i in originals]
        return [cells[start:start + columns] for start in range(0, len(cells), columns)]
    rows = []
    for root in originals:
        row = [("image", root)]
        for i, candidate in enumerate(candidates):
            if candidate.parent is not None and _root(candidates, i) == root:
                row += [("overlay", i), ("image", i)]
        rows.append(row)
    return rows


def _tile(image: Image.Image) -> Image.Image:
    resample = Image.Resampling.NEAREST if max(image.size) < TILE // 2 else Image.Resampling.BICUBIC
    return image.convert("RGB").resize((TILE, TILE), resample)


def _caption(index: int, candidate: Any, kind: str, score: Optional[float], score_name: str) -> str:
    if kind == "overlay":
        return f"mask of #{index} on #{candidate.parent}"
    origin = "seed" if candidate.parent is None else f"from #{candidate.parent}"
    detail = f"seed {candidate.seed}" if candidate.parent is None else origin
    value = "" if score is None else f"  {score_name} {score:.3f}"
    return f"#{index} {detail}\n{value.strip()}"


def candidate_grid(result: Any, scores: Optional[Sequence[Optional[float]]] = None, title: str = "",
                   score_name: str = "score") -> Image.Image:
    """A PNG-ready grid of every candidate with its score, each refinement beside its parent
    overlaid with the refinement's heatmap and mask; the selected one framed in green."""
    candidates = list(result.candidates)
    if scores is None:
        scores = [getattr(c, "score", None) for c in candidates]
    rows = _layout(candidates)
    columns = max(len(row) for row in rows)
    header = 22 if title else 0
    cell_h = TILE + CAPTION
    grid = Image.new("RGB", (columns * TILE + (columns + 1) * 4, header + len(rows) * (cell_h + 4) + 4),
                     "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((6, 5), title if len(title) <= 110 else title[:107] + "...", fill="black",
                  font=_font(13))
    for r, row in enumerate(rows):
        for c, (kind, index) in enumerate(row):
            x, y = 4 + c * (TILE + 4), header + 4 + r * (cell_h + 4)
            candidate = candidates[index]
            if kind == "overlay":  # drawn at tile size so the outline stays thin
                parent = _tile(candidates[int(candidate.parent)].image)
                picture = overlay(parent, getattr(candidate, "heatmap", None),
                                  getattr(candidate, "mask", None))
            else:
                picture = candidate.image
            grid.paste(_tile(picture), (x, y))
            if kind == "image" and index == int(result.selected):
                draw.rectangle([x - 2, y - 2, x + TILE + 1, y + TILE + 1], outline=SELECTED_RGB, width=3)
            given = None if scores is None else scores[index]
            score = None if given is None else float(given)
            text = _caption(index, candidate, kind, score, score_name)
            if kind == "image" and index == int(result.selected):
                text += "  [selected]"
            draw.multiline_text((x + 2, y + TILE + 2), text, fill="black", font=_font(10), spacing=1)
    return grid


# --------------------------------------------------------------------------------------------
# Runs and summaries
# --------------------------------------------------------------------------------------------
def load_run(path: Union[str, os.PathLike]) -> RunDirectory:
    """Read a run directory through its manifest (``run.json``, records and leftover parts)."""
    return Manifest(path).load()


def selected_score(record: Mapping[str, Any], verifier: str) -> Optional[float]:
    values = record.get("scores", {}).get(verifier)
    return None if values is None else float(values[int(record["selected"])])


def verifier_names(runs: Sequence[RunDirectory]) -> list[str]:
    """Verifiers in first-seen order across runs: selection verifiers, then held-out ones."""
    names: list[str] = []
    for run in runs:
        for record in run.records:
            for name in record.get("scores", {}):
                if name not in names:
                    names.append(name)
    return names


def summarize(run: RunDirectory, verifiers: Sequence[str]) -> dict[str, Any]:
    """Means per prompt of the selected image's scores and of the cost."""
    records = run.records
    count = len(records)

    def mean(values: Sequence[float]) -> Optional[float]:
        return float(np.mean(values)) if values else None

    scores = {}
    for name in verifiers:
        values = [s for s in (selected_score(r, name) for r in records) if s is not None]
        scores[name] = mean(values)
    seconds = [r.get("seconds", {}).get("total", 0.0) for r in records]
    return {
        "prompts": count,
        "scores": scores,
        "nfe": mean([r["nfe"] for r in records]),
        "verifier_calls": mean([r["verifier_calls"] for r in records]),
        "seconds": mean(seconds),
        "total_nfe": sum(r["nfe"] for r in records),
        "total_verifier_calls": sum(r["verifier_calls"] for r in records),
        "total_seconds": float(sum(seconds)),
    }


def _fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _role(name: str, runs: Sequence[RunDirectory]) -> str:
    selection = {run.spec.get("verifier") for run in runs}
    return "selection" if name in selection else "held-out"


# --------------------------------------------------------------------------------------------
# LoTTS against Best-of-N, in words
# --------------------------------------------------------------------------------------------
def method_label(run: RunDirectory) -> str:
    """"LoTTS", "Best-of-7" (N read from the records), else the run's name."""
    if run.spec.get("method") == "best-of-n" and run.records:
        return f"Best-of-{len(run.records[0].get('seeds', []))}"
    return "LoTTS" if run.spec.get("method") == "lotts" else run.name


def _sizing(run: RunDirectory, other: RunDirectory) -> str:
    """How one side's budget was set, with its NFE per prompt."""
    config, nfe = run.spec.get("config", {}), summarize(run, [])["nfe"] or 0.0
    if run.spec.get("method") == "lotts":
        seeds, k = config.get("num_seeds"), config.get("num_refinements")
        depth = "each" if config.get("search", "siblings") == "siblings" else "deep (chain)"
        return f"LoTTS: {seeds} originals with {k} refinements {depth}, {nfe:.0f} NFE per prompt"
    other_nfe = summarize(other, [])["nfe"] or 0.0
    how = ("N matched to LoTTS's NFE (LoTTSConfig.matched_best_of_n)"
           if config.get("n") == "matched" else f"N = {config.get('n')} as asked")
    ratio = f", {nfe / other_nfe:.2f}x LoTTS's" if other_nfe else ""
    return f"{method_label(run)}: {how}, {nfe:.0f} NFE per prompt{ratio}"


def _verdict(runs: Sequence[RunDirectory], verifier: str, role: str) -> str:
    """Which side has the higher mean score of its selected images, and on how many prompts."""
    by_id = [{r["id"]: score for r in run.records
              if (score := selected_score(r, verifier)) is not None} for run in runs]
    common = [i for i in by_id[0] if i in by_id[1]]
    if not common:
        return f"No prompt was scored by the {role} verifier {verifier} in both runs."
    means = [float(np.mean([scores[i] for i in common])) for scores in by_id]
    labels = [method_label(run) for run in runs]
    wins = [sum(by_id[j][i] > by_id[1 - j][i] for i in common) for j in (0, 1)]
    if round(means[0], 3) == round(means[1], 3):
        outcome = "a tie"
    else:
        best = int(means[1] > means[0])
        outcome = f"{labels[best]} wins (better on {wins[best]} of {len(common)} prompts)"
    return (f"On the {role} verifier {verifier}, mean score of the selected images over "
            f"{len(common)} prompts: {labels[0]} {means[0]:.3f}, {labels[1]} {means[1]:.3f}: "
            f"{outcome}.")


def lotts_vs_best_of_n(runs: Sequence[RunDirectory]) -> list[str]:
    """For a LoTTS run and a Best-of-N run: how each was sized and who wins on each held-out
    verifier (the selection verifier when none was held out). Empty for other pairs."""
    methods = [run.spec.get("method") for run in runs]
    if sorted(map(str, methods)) != ["best-of-n", "lotts"]:
        return []
    runs = sorted(runs, key=lambda run: run.spec.get("method") != "lotts")  # LoTTS first
    lines = [_sizing(runs[0], runs[1]) + ". " + _sizing(runs[1], runs[0]) + "."]
    held_out = [v for v in verifier_names(runs) if _role(v, runs) == "held-out"]
    if held_out:
        lines += [_verdict(runs, v, "held-out") for v in held_out]
    else:
        lines += [_verdict(runs, str(runs[0].spec.get("verifier")), "selection") +
                  " (No held-out verifier: the selection verifier also picked, so it favours "
                  "whichever side it scored more.)"]
    return lines


# --------------------------------------------------------------------------------------------
# report.html
# --------------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;
background:#fafafa;max-width:1400px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.sub{color:#666;margin-bottom:16px}
.verdict{font-weight:600;margin:4px 0}
.note{background:#fff4d6;border:1px solid #f0c36d;padding:8px 12px;border-radius:6px;margin:6px 0}
table{border-collapse:collapse;background:white;margin:8px 0}
th,td{border:1px solid #ddd;padding:6px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f0f0f3}
.prompt{background:white;border:1px solid #e3e3e3;border-radius:8px;padding:12px;margin:14px 0}
.prompt h3{margin:0 0 8px;font-size:15px}
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0}figure.pick{max-width:300px}figcaption{font-size:12px;color:#444;margin-top:4px}
img.sel{width:192px;height:192px;image-rendering:pixelated;border:1px solid #ccc}
img.grid{max-width:100%;border:1px solid #ddd}
"""


def _relative(run: RunDirectory, path: Optional[str], report_dir: Path) -> Optional[str]:
    if not path:
        return None
    return Path(os.path.relpath(run.path / path, report_dir)).as_posix()


def _summary_table(runs: Sequence[RunDirectory], verifiers: Sequence[str]) -> str:
    head = ["run", "prompts"] + [f"{html.escape(v)}<br><small>{_role(v, runs)}</small>" for v in verifiers]
    head += ["NFE / prompt", "verifier calls / prompt", "seconds / prompt"]
    rows = []
    summaries = [summarize(run, verifiers) for run in runs]
    for run, summary in zip(runs, summaries):
        cells = [html.escape(run.name), str(summary["prompts"])]
        cells += [_fmt(summary["scores"][v]) for v in verifiers]
        cells += [_fmt(summary["nfe"], 1), _fmt(summary["verifier_calls"], 1),
                  _fmt(summary["seconds"], 2)]
        rows.append(cells)
    if len(runs) == 2 and all(s["nfe"] for s in summaries):
        a, b = summaries
        cells = [f"{html.escape(runs[1].name)} / {html.escape(runs[0].name)}", ""]
        cells += ["" for _ in verifiers]
        cells += [f"{b['nfe'] / a['nfe']:.2f}x",
                  f"{b['verifier_calls'] / a['verifier_calls']:.2f}x" if a["verifier_calls"] else "-",
                  f"{b['seconds'] / a['seconds']:.2f}x" if a["seconds"] else "-"]
        rows.append(cells)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return ("<table id='summary'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr></thead><tbody>{body}</tbody></table>")


def ranking_key(runs: Sequence[RunDirectory], verifiers: Sequence[str]) -> Optional[str]:
    """The verifier runs are ranked by: the first held-out one, else the selection verifier."""
    held = [v for v in verifiers if _role(v, runs) == "held-out"]
    ordered = held or list(verifiers)
    return ordered[0] if ordered else None


def rank_runs(runs: Sequence[RunDirectory], verifiers: Sequence[str]
              ) -> list[tuple[RunDirectory, dict[str, Any]]]:
    """Runs with their summaries, best mean score of :func:`ranking_key` first (ties: fewer
    NFE per prompt first)."""
    key = ranking_key(runs, verifiers)
    ranked = [(run, summarize(run, verifiers)) for run in runs]

    def order(item: tuple[RunDirectory, dict[str, Any]]) -> tuple[float, float]:
        score = item[1]["scores"].get(key) if key else None
        return (-(score if score is not None else -math.inf), item[1]["nfe"] or 0.0)
    return sorted(ranked, key=order)


def _ranking_rows(runs: Sequence[RunDirectory], verifiers: Sequence[str]) -> tuple[str, list[list[str]]]:
    key = ranking_key(runs, verifiers)
    rows = [[str(rank), run.name, _fmt(summary["scores"].get(key) if key else None),
             _fmt(summary["nfe"], 1), _fmt(summary["verifier_calls"], 1), _fmt(summary["seconds"], 2)]
            for rank, (run, summary) in enumerate(rank_runs(runs, verifiers), 1)]
    return str(key), rows


def _ranking_table(runs: Sequence[RunDirectory], verifiers: Sequence[str]) -> str:
    key, rows = _ranking_rows(runs, verifiers)
    head = ["rank", "method", f"mean {html.escape(key)} ({_role(key, runs)})", "NFE / prompt",
            "verifier calls / prompt", "seconds / prompt"]
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return ("<h2>Ranking</h2><table id='ranking'><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + f"</tr></thead><tbody>{body}</tbody></table>")


def ranking_markdown(run_dirs: Sequence[Union[str, os.PathLike]]) -> str:
    """The runs ranked by mean held-out score of the selected image (markdown)."""
    runs = [load_run(d) for d in run_dirs]
    verifiers = verifier_names(runs)
    key, rows = _ranking_rows(runs, verifiers)
    lines = [f"# Ranking by mean {key} ({_role(key, runs)})", "",
             "| rank | method | score | NFE / prompt | verifier calls / prompt | s / prompt |",
             "|---:|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _prompt_sections(runs: Sequence[RunDirectory], verifiers: Sequence[str], report_dir: Path) -> str:
    by_run = [{r["id"]: r for r in run.records} for run in runs]
    ids: list[Any] = []
    for records in by_run:
        ids += [i for i in records if i not in ids]
    sections = []
    for prompt_id in ids:
        present = [(run, records[prompt_id]) for run, records in zip(runs, by_run) if prompt_id in records]
        prompt = present[0][1]["prompt"]
        figures, grids = [], []
        for run, record in present:
            scores = ", ".join(f"{v} {_fmt(selected_score(record, v))}" for v in verifiers
                               if selected_score(record, v) is not None)
            caption = (f"<b>{html.escape(run.name)}</b> #{record['selected']} &middot; "
                       f"{html.escape(scores)} &middot; NFE {record['nfe']}")
            src = _relative(run, record.get("image"), report_dir)
            figures.append(f"<figure class='pick'><img class='sel' src='{html.escape(src or '')}' "
                           f"alt='selected image, {html.escape(run.name)}'>"
                           f"<figcaption>{caption}</figcaption></figure>")
            grid = _relative(run, record.get("grid"), report_dir)
            if grid:
                refined = any(p is not None for p in record.get("parents", []))
                legend = "; cyan outline = mask, colour = defect heatmap" if refined else ""
                grids.append(f"<figure><img class='grid' src='{html.escape(grid)}' "
                             f"alt='candidates, {html.escape(run.name)}'><figcaption>"
                             f"{html.escape(run.name)}: every candidate, green frame = selected"
                             f"{legend}</figcaption></figure>")
        sections.append(f"<section class='prompt'><h3>{html.escape(str(prompt_id))}: "
                        f"{html.escape(prompt)}</h3><div class='row'>{''.join(figures)}</div>"
                        f"<div class='row'>{''.join(grids)}</div></section>")
    return "".join(sections)


def render_report(runs: Sequence[RunDirectory], report_dir: Union[str, os.PathLike],
                  title: str = "LoTTS report", notes: Sequence[str] = ()) -> str:
    """The HTML text of a report over ``runs``, with paths relative to ``report_dir``."""
    report_dir = Path(report_dir)
    verifiers = verifier_names(runs)
    all_notes = list(dict.fromkeys([*notes, *(n for run in runs for n in run.notes)]))
    notes_html = "".join(f"<div class='note'>{html.escape(n)}</div>" for n in all_notes)
    specs = "; ".join(f"{html.escape(run.name)}: model {html.escape(str(run.spec.get('model', '?')))}, "
                      f"verifier {html.escape(str(run.spec.get('verifier', '?')))}" for run in runs)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><div class='sub'>{specs}</div>{notes_html}"
        "<h2>Summary</h2><p class='sub'>Scores are those of the selected image, averaged over "
        "prompts; held-out verifiers did not take part in the selection.</p>"
        + "".join(f"<p class='verdict'>{html.escape(line)}</p>" for line in lotts_vs_best_of_n(runs))
        + f"{_summary_table(runs, verifiers)}"
        f"{_ranking_table(runs, verifiers) if len(runs) > 2 else ''}<h2>Prompts</h2>"
        f"{_prompt_sections(runs, verifiers, report_dir)}</body></html>\n"
    )


def write_report(run_dirs: Sequence[Union[str, os.PathLike]], out_file: Union[str, os.PathLike],
                 title: str = "LoTTS report", notes: Sequence[str] = ()) -> Path:
    """Write ``report.html`` (a static page, no network needed) for one or more runs."""
    out_file = Path(out_file)
    runs = [load_run(d) for d in run_dirs]
    text = render_report(runs, out_file.parent, title=title, notes=notes)
    write_bytes_atomic(out_file, text.encode("utf-8"))
    return out_file


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------
def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{b / a:.2f}x" if a and b is not None else "-"


def _difference(a: Optional[float], b: Optional[float]) -> str:
    return f"{b - a:+.3f}" if a is not None and b is not None else "-"


def compare_runs(dir_a: Union[str, os.PathLike], dir_b: Union[str, os.PathLike]) -> str:
    """A markdown side-by-side of two runs over the prompts both finished: mean scores of the
    selected images (B - A) and cost (B / A), then one row per prompt."""
    run_a, run_b = load_run(dir_a), load_run(dir_b)
    ids_b = {s["id"] for s in run_b.records}
    common = [r["id"] for r in run_a.records if r["id"] in ids_b]
    if not common:
        raise ValueError(f"{str(dir_a)!r} and {str(dir_b)!r} share no finished prompt ids")
    keep = set(common)
    run_a.records = [r for r in run_a.records if r["id"] in keep]
    run_b.records = [r for r in run_b.records if r["id"] in keep]
    names_b = set(verifier_names([run_b]))
    verifiers = [v for v in verifier_names([run_a]) if v in names_b]
    sa, sb = summarize(run_a, verifiers), summarize(run_b, verifiers)
    name_a, name_b = f"A: {run_a.name} ({run_a.path.name})", f"B: {run_b.name} ({run_b.path.name})"
    lines = [f"# {name_a} vs {name_b}", "",
             f"{len(common)} prompts in common.", ""]
    lines += [line for sentence in lotts_vs_best_of_n([run_a, run_b]) for line in (sentence, "")]
    lines += [f"| metric | {name_a} | {name_b} | B vs A |", "|---|---:|---:|---:|"]
    for v in verifiers:
        lines.append(f"| mean {v} ({_role(v, [run_a, run_b])}) | {_fmt(sa['scores'][v])} | "
                     f"{_fmt(sb['scores'][v])} | {_difference(sa['scores'][v], sb['scores'][v])} |")
    for key, label in (("total_nfe", "total NFE"), ("total_verifier_calls", "total verifier calls"),
                       ("total_seconds", "total seconds"), ("nfe", "NFE / prompt"),
                       ("seconds", "seconds / prompt")):
        lines.append(f"| {label} | {_fmt(sa[key], 2)} | {_fmt(sb[key], 2)} | {_ratio(sa[key], sb[key])} |")
    lines += ["", "| id | prompt | " + " | ".join(f"A {v} | B {v}" for v in verifiers) + " |",
              "|---|---|" + "---:|---:|" * len(verifiers)]
    by_b = {r["id"]: r for r in run_b.records}
    for record in run_a.records:
        other = by_b[record["id"]]
        cells = [f"{_fmt(selected_score(record, v))} | {_fmt(selected_score(other, v))}" for v in verifiers]
        prompt = record["prompt"].replace("|", "\\|")
        lines.append(f"| {record['id']} | {prompt[:60]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
