"""Record every hidden unit of a character language model and find units that track text properties."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.language_model import CharLanguageModel
from models.vocabulary import Vocabulary

# Bounds of `inspect`; the service validates its requests against the same numbers.
MAX_INSPECT_CHARS = 4000
MAX_UNITS = 32
_OPEN_BRACKETS, _CLOSE_BRACKETS = "([{", ")]}"
_OPEN_QUOTES, _CLOSE_QUOTES, _QUOTES = "“«", "”»", '"'
_PARAGRAPH_BREAKS = ("", "%")  # an empty line or a fortune separator ends any open quote


@dataclass(frozen=True)
class UnitRecording:
    """Activations of every unit at every character: row t is the state after reading text[t]."""

    characters: list[str]
    activations: np.ndarray  # (T, U) float32
    names: list[str]  # U names "<h|c><layer>.<index>", e.g. "c1.37"


@dataclass(frozen=True)
class UnitScore:
    """How well one unit tracks a property: Pearson r over the recorded characters."""

    unit: str
    index: int
    correlation: float


@dataclass(frozen=True)
class UnitActivations:
    """One unit's activation per character, with its correlation when it was found by property."""

    unit: str
    activations: list[float]
    correlation: float | None = None


@dataclass(frozen=True)
class Inspection:
    """What `inspect` returns: the characters read and the chosen units' activations."""

    characters: list[str]
    units: list[UnitActivations]


def unit_names(model: CharLanguageModel) -> list[str]:
    """Names of all units in recording order: h of every layer, then c of every layer (LSTM)."""
    c = model.config
    states = ("h", "c") if c.cell == "lstm" else ("h",)
    return [
        f"{s}{layer}.{i}"
        for s in states
        for layer in range(c.num_layers)
        for i in range(c.hidden_size)
    ]


@torch.inference_mode()
def record_units(model: CharLanguageModel, vocabulary: Vocabulary, text: str) -> UnitRecording:
    """Run the model (in eval mode) over `text`, keeping h (and c) of every layer at every character."""
    characters = vocabulary.tokenizer.tokenize(text)
    if not characters:
        return UnitRecording(
            [], np.zeros((0, len(unit_names(model))), np.float32), unit_names(model)
        )
    device = next(model.parameters()).device
    ids = torch.tensor([vocabulary.encode(text)], dtype=torch.long, device=device)  # (1, T)
    states = _layer_by_layer(model, ids)
    activations = torch.cat(states, dim=1).float().cpu().numpy()  # (T, S*L*H)
    return UnitRecording(characters, activations, unit_names(model))


def _layer_by_layer(model: CharLanguageModel, ids: Tensor) -> list[Tensor]:
    """[h of layer 0, h of layer 1, ..., c of layer 0, ...], each (T, H), for ids (1, T).

    A stacked nn.LSTM returns h at every step only for its top layer, and c only at the end. Running
    one layer at a time gives every layer's h; c then follows from that layer's gates.
    """
    core = model.decoder.rnn
    initial = {k: v[0] for k, v in core.initial_state(1).items()}  # (L, H) each
    x = model.decoder.embedding(ids)  # (1, T, E)
    hs, cs = [], []
    for layer in range(core.config.num_layers):
        single = _single_layer(core.rnn, layer).to(x.device)
        h0 = initial["h"][layer].view(1, 1, -1)  # (1, 1, H)
        hx = (h0, initial["c"][layer].view(1, 1, -1)) if core.is_lstm else h0
        out, _ = single(x, hx)  # (1, T, H)
        hs.append(out[0])
        if core.is_lstm:
            cs.append(_cell_states(single, x[0], out[0], initial["h"][layer], initial["c"][layer]))
        x = out
    return hs + cs


def _single_layer(stack: nn.RNNBase, layer: int) -> nn.RNNBase:
    """Layer `layer` of a stacked nn.LSTM / nn.GRU / nn.RNN as a one-layer module of the same kind."""
    extra = {"nonlinearity": stack.nonlinearity} if isinstance(stack, nn.RNN) else {}
    size = stack.input_size if layer == 0 else stack.hidden_size
    single = type(stack)(size, stack.hidden_size, bias=stack.bias, batch_first=True, **extra)
    suffix = f"_l{layer}"
    weights = {
        n[: -len(suffix)] + "_l0": p for n, p in stack.named_parameters() if n.endswith(suffix)
    }
    single.load_state_dict(weights)
    return single


def _cell_states(lstm: nn.LSTM, x: Tensor, h: Tensor, h0: Tensor, c0: Tensor) -> Tensor:
    """c at every step (T, H) of a one-layer LSTM from its inputs x (T, I) and outputs h (T, H)."""
    previous = torch.cat([h0.unsqueeze(0), h[:-1]])  # (T, H): the h each step starts from
    gates = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(
        previous, lstm.weight_hh_l0, lstm.bias_hh_l0
    )  # (T, 4H), PyTorch's order: input, forget, cell, output
    i, f, g, _ = gates.chunk(4, dim=1)
    update = torch.sigmoid(i) * torch.tanh(g)  # (T, H)
    forget = torch.sigmoid(f)
    c, cells = c0, []
    for t in range(x.size(0)):  # c_t = f_t * c_{t-1} + i_t * g_t
        c = forget[t] * c + update[t]
        cells.append(c)
    return torch.stack(cells)  # (T, H)


def in_quotes(characters: Sequence[str]) -> np.ndarray:
    """1.0 from an opening quote up to (not including) its closing quote; paragraphs reset it."""
    values, inside, line = np.zeros(len(characters)), False, ""
    for t, ch in enumerate(characters):
        if ch == "\n":
            inside = inside and line.strip() not in _PARAGRAPH_BREAKS
            line = ""
        else:
            line += ch
        if ch in _QUOTES:
            inside = not inside
        elif ch in _OPEN_QUOTES or ch in _CLOSE_QUOTES:
            inside = ch in _OPEN_QUOTES
        values[t] = float(inside)
    return values


def line_position(characters: Sequence[str]) -> np.ndarray:
    """How many characters of the current line have been read (a newline ends the line at 0)."""
    values, position = np.zeros(len(characters)), 0
    for t, ch in enumerate(characters):
        position = 0 if ch == "\n" else position + 1
        values[t] = position
    return values


def bracket_depth(characters: Sequence[str]) -> np.ndarray:
    """Nesting depth of (), [] and {} after each character (never below 0)."""
    values, depth = np.zeros(len(characters)), 0
    for t, ch in enumerate(characters):
        depth += ch in _OPEN_BRACKETS
        depth = max(0, depth - (ch in _CLOSE_BRACKETS))
        values[t] = depth
    return values


def in_word(characters: Sequence[str]) -> np.ndarray:
    """1.0 on letters and digits (and apostrophes between them), 0.0 elsewhere."""
    values = np.array([float(ch.isalnum()) for ch in characters])
    for t in range(1, len(characters) - 1):
        if characters[t] in "'’" and values[t - 1] and values[t + 1]:
            values[t] = 1.0
    return values


PROPERTIES: dict[str, Callable[[Sequence[str]], np.ndarray]] = {
    "in_quotes": in_quotes,
    "line_position": line_position,
    "bracket_depth": bracket_depth,
    "in_word": in_word,
}


def correlations(activations: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Pearson r of every unit (T, U) with one property (T,) -> (U,); constant units get 0."""
    a = activations.astype(np.float64) - activations.mean(axis=0)
    v = values.astype(np.float64) - values.mean()
    denominator = np.sqrt((a * a).sum(axis=0) * (v * v).sum())
    return np.divide(a.T @ v, denominator, out=np.zeros(a.shape[1]), where=denominator > 0)


def top_units(recording: UnitRecording, values: np.ndarray, k: int = 5) -> list[UnitScore]:
    """The k units whose activation tracks `values` (T,) best, by |Pearson r|, best first."""
    if values.shape != (recording.activations.shape[0],):
        raise ValueError(f"values must have shape ({recording.activations.shape[0]},)")
    r = correlations(recording.activations, values)
    order = np.argsort(-np.abs(r), kind="stable")[:k]
    return [UnitScore(recording.names[i], int(i), float(r[i])) for i in order]


def property_values(name: str, characters: Sequence[str]) -> np.ndarray:
    """The named property (one of PROPERTIES) at every character; a specific error otherwise."""
    if name not in PROPERTIES:
        raise ValueError(f"unknown property {name!r}; choose one of {sorted(PROPERTIES)}")
    values = PROPERTIES[name](characters)
    if values.size == 0 or np.ptp(values) == 0:
        raise ValueError(
            f"the text never changes {name}, so no unit can track it; send longer text"
        )
    return values


def best_units(recording: UnitRecording, k: int = 1) -> dict[str, list[UnitScore]]:
    """For every property that varies in the recorded text, its k best units."""
    found = {}
    for name in PROPERTIES:
        try:
            found[name] = top_units(recording, property_values(name, recording.characters), k)
        except ValueError:
            continue
    return found


def inspect(
    model: CharLanguageModel,
    vocabulary: Vocabulary,
    text: str,
    units: Sequence[str] | None = None,
    property: str | None = None,
    top: int = 5,
) -> Inspection:
    """Activations over `text` of the named `units`, or of the `top` units that track `property`.

    Bounds: 1 to MAX_INSPECT_CHARS characters; exactly one of `units` (1 to MAX_UNITS names from
    `unit_names`) or `property` (a key of PROPERTIES, with 1 <= top <= MAX_UNITS). ValueError otherwise.
    """
    _check_inspection(text, units, property, top)
    recording = record_units(model, vocabulary, text)
    if property is not None:
        scores = top_units(recording, property_values(property, recording.characters), top)
    else:
        index = {name: i for i, name in enumerate(recording.names)}
        unknown = [u for u in units or [] if u not in index]
        if unknown:
            raise ValueError(f"unknown units {unknown[:5]}; names look like h0.12 or c1.200")
        scores = [UnitScore(u, index[u], float("nan")) for u in units or []]
    return Inspection(
        recording.characters,
        [
            UnitActivations(
                s.unit,
                recording.activations[:, s.index].tolist(),
                None if property is None else s.correlation,
            )
            for s in scores
        ],
    )


def _check_inspection(
    text: str, units: Sequence[str] | None, property: str | None, top: int
) -> None:
    if not 1 <= len(text) <= MAX_INSPECT_CHARS:
        raise ValueError(f"text must have 1 to {MAX_INSPECT_CHARS} characters, got {len(text)}")
    if (units is None) == (property is None):
        raise ValueError("give either units or property, not both and not neither")
    if units is not None and not 1 <= len(units) <= MAX_UNITS:
        raise ValueError(f"ask for 1 to {MAX_UNITS} units, got {len(units)}")
    if property is not None and not 1 <= top <= MAX_UNITS:
        raise ValueError(f"top must be between 1 and {MAX_UNITS}, got {top}")
