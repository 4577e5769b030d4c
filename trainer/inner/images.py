"""Pictures of an evaluation for TensorBoard's Images tab: a labelled confusion matrix and
a grid of the worst mistakes, as uint8 RGB arrays. Pillow draws the text (TensorBoard
itself depends on it); numpy does the rest."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_FONT_SIZE = 12
_WHITE, _BLACK, _GREY = (255, 255, 255), (0, 0, 0), (110, 110, 110)


@functools.lru_cache(maxsize=None)
def _font():
  return ImageFont.load_default(size=_FONT_SIZE)


@functools.lru_cache(maxsize=4096)
def _text_mask(text: str, size: int) -> Image.Image:
  """The text's pixels as a mask, rendered once: drawing a string costs ~50 us, and a
  picture repeats the same few (cell percentages, class captions) at every eval."""
  font = ImageFont.load_default(size=size)
  _, _, right, bottom = font.getbbox(text)
  mask = Image.new("L", (max(1, int(right)), max(1, int(bottom))))
  ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
  return mask


def _paste_text(image: Image.Image, xy, text: str, fill, size: int = _FONT_SIZE) -> None:
  mask = _text_mask(text, size)
  x, y = int(xy[0]), int(xy[1])
  image.paste(fill, (x, y, x + mask.width, y + mask.height), mask)


def _short(name: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
  """The name cut with an ellipsis to fit `width` pixels."""
  if draw.textlength(name, font=font) <= width:
    return name
  while name and draw.textlength(name + "~", font=font) > width:
    name = name[:-1]
  return name + "~"


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """[true, predicted] counts."""
  flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
  return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


@functools.lru_cache(maxsize=4)
def _matrix_frame(class_names: tuple[str, ...]):
  """What stays the same from one eval to the next: the white canvas with the class names
  and axis captions, and the layout (cell size, left and top of the cells)."""
  n = len(class_names)
  cell = int(np.clip(600 // max(n, 1), 6, 40))
  font = _font()
  probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  label_w = int(min(140, max(probe.textlength(c, font=font) for c in class_names) + 8))
  top = 2 * _FONT_SIZE + 10 + label_w  # title, axis caption and the column names
  left = label_w + _FONT_SIZE + 8
  image = Image.new("RGB", (left + n * cell + 8, top + n * cell + 8), _WHITE)
  draw = ImageDraw.Draw(image)
  draw.text((left, _FONT_SIZE + 6), "predicted", fill=_GREY, font=font)
  names = [_short(c, label_w - 6, draw, font) for c in class_names]
  for i, name in enumerate(names):
    y = top + i * cell + (cell - _FONT_SIZE) // 2
    draw.text((_FONT_SIZE + 6, y), name, fill=_BLACK, font=font)
    # Column names, written sideways above each column.
    label = Image.new("RGB", (label_w, _FONT_SIZE + 4), _WHITE)
    ImageDraw.Draw(label).text((2, 0), name, fill=_BLACK, font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (left + i * cell + (cell - label.width) // 2, top - label_w - 2))
  vertical = Image.new("RGB", (80, _FONT_SIZE + 4), _WHITE)
  ImageDraw.Draw(vertical).text((0, 0), "true", fill=_GREY, font=font)
  image.paste(vertical.rotate(90, expand=True), (2, top))
  return np.asarray(image), cell, left, top


def confusion_matrix(counts: np.ndarray, class_names, title: str = "") -> np.ndarray:
  """A heat map of row-normalised counts (each true class sums to 100%), each cell
  showing its percentage; rows are true classes, columns predicted ones."""
  n = len(counts)
  totals = counts.sum(axis=1, keepdims=True)
  share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
  frame, cell, left, top = _matrix_frame(tuple(str(c) for c in class_names))
  # Blue heat map: white at 0, dark blue at 100%.
  shade = (1.0 - share)[..., None] * np.array([225, 215, 150]) + np.array([20, 40, 105])
  canvas = frame.copy()
  canvas[top:top + n * cell, left:left + n * cell] = np.repeat(
      np.repeat(shade.astype(np.uint8), cell, axis=0), cell, axis=1)
  image = Image.fromarray(canvas)
  draw = ImageDraw.Draw(image)
  draw.text((4, 2), title or "confusion matrix (rows: true, columns: predicted)", fill=_BLACK,
            font=_font())
  if cell >= 26:  # the percentage in each cell, where it fits
    size = max(8, min(11, cell // 3))
    for t, p in zip(*np.nonzero(counts)):
      text = f"{100 * share[t, p]:.0f}"
      x = left + p * cell + (cell - _text_mask(text, size).width) / 2
      _paste_text(image, (x, top + t * cell + cell / 2 - 6), text,
                  _WHITE if share[t, p] > 0.5 else _BLACK, size)
  return np.asarray(image)


def worst_mistakes(images_at, labels: np.ndarray, predictions: np.ndarray,
                   losses: np.ndarray, class_names, count: int = 16) -> np.ndarray | None:
  """A grid of the `count` misclassified examples with the highest loss, each captioned
  with its true and predicted class; None when there is no mistake. images_at(positions)
  returns those examples' uint8 images (a streamed split reads only them)."""
  wrong = np.flatnonzero(labels != predictions)
  if not wrong.size:
    return None
  worst = wrong[np.argsort(-losses[wrong], kind="stable")[:count]]
  images = images_at(worst)
  tile = max(1, int(np.ceil(84 / images.shape[1])))  # upscale small images to ~84 px
  h, w = images.shape[1] * tile, images.shape[2] * tile
  caption = 2 * (_FONT_SIZE + 2) + 4
  cols = int(np.ceil(np.sqrt(len(worst))))
  rows = int(np.ceil(len(worst) / cols))
  cell_w = max(w, 96) + 8
  canvas = Image.new("RGB", (cols * cell_w, rows * (h + caption + 8)), _WHITE)
  draw = ImageDraw.Draw(canvas)
  font = _font()
  for k, i in enumerate(worst):
    picture = images[k]
    if picture.shape[-1] == 1:
      picture = np.repeat(picture, 3, axis=-1)
    picture = np.repeat(np.repeat(picture, tile, axis=0), tile, axis=1)
    x, y = (k % cols) * cell_w + 4, (k // cols) * (h + caption + 8) + 4
    canvas.paste(Image.fromarray(picture.astype(np.uint8)), (x, y))
    true = _short(f"true: {class_names[labels[i]]}", cell_w - 6, draw, font)
    pred = _short(f"pred: {class_names[predictions[i]]}", cell_w - 6, draw, font)
    _paste_text(canvas, (x, y + h + 2), true, _BLACK)
    _paste_text(canvas, (x, y + h + _FONT_SIZE + 4), pred, (180, 30, 30))
  return np.asarray(canvas)


def per_class_table(counts: np.ndarray, class_names) -> str:
  """Markdown: each class's accuracy (recall) and its number of examples."""
  totals = counts.sum(axis=1)
  rows = ["| class | accuracy | examples | most often taken for |", "|---|---:|---:|---|"]
  for c, name in enumerate(class_names):
    accuracy = f"{counts[c, c] / totals[c]:.4f}" if totals[c] else "-"
    others = counts[c].copy()
    others[c] = 0
    confused = f"{class_names[int(others.argmax())]} ({int(others.max())})" if others.any() else ""
    rows.append(f"| {name} | {accuracy} | {int(totals[c])} | {confused} |")
  return "\n".join(rows)
