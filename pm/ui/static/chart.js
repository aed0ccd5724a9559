// Charts drawn on a canvas by our own code: bars (the outcome histogram) and a line (tasks/s).

const COLOURS = {
  resolved: "#2e7d32",
  error: "#c62828",
  timeout: "#ef6c00",
  expired: "#8d6e63",
  cancelled: "#757575",
  sent: "#1565c0",
  pending: "#b0bec5",
};

export function colourOf(label) {
  const status = String(label).split(" ")[0];
  return COLOURS[status] ?? "#5e35b1";
}

function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 200;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext("2d");
  context.scale(ratio, ratio);
  context.clearRect(0, 0, width, height);
  context.font = "12px system-ui, sans-serif";
  return { context, width, height };
}

/** Horizontal bars, one per {label, value}; labels are drawn with fillText (plain text). */
export function drawBars(canvas, bars) {
  // As tall as its bars (a style set from script: the policy forbids only inline markup).
  canvas.style.height = `${Math.max(40, bars.length * 22 + 8)}px`;
  const { context, width } = prepare(canvas);
  const max = Math.max(1, ...bars.map((bar) => bar.value));
  const labelWidth = 150;
  const rowHeight = 22;
  bars.forEach((bar, row) => {
    const y = row * rowHeight + 4;
    context.fillStyle = "#222";
    context.fillText(bar.label, 4, y + 13, labelWidth - 8);
    const length = ((width - labelWidth - 60) * bar.value) / max;
    context.fillStyle = colourOf(bar.label);
    context.fillRect(labelWidth, y, Math.max(bar.value ? 2 : 0, length), rowHeight - 6);
    context.fillStyle = "#222";
    context.fillText(String(bar.value), labelWidth + length + 6, y + 13);
  });
  if (!bars.length) {
    context.fillStyle = "#777";
    context.fillText("no tasks yet", 4, 16);
  }
}

/** Lines over time: series = [{label, colour, values: [numbers]}], all the same length. */
export function drawLines(canvas, series, secondsPerPoint) {
  const { context, width, height } = prepare(canvas);
  const points = Math.max(...series.map((line) => line.values.length), 0);
  const max = Math.max(1, ...series.flatMap((line) => line.values));
  const left = 44;
  const bottom = height - 18;
  context.strokeStyle = "#ccc";
  context.beginPath();
  context.moveTo(left, 4);
  context.lineTo(left, bottom);
  context.lineTo(width - 4, bottom);
  context.stroke();
  context.fillStyle = "#555";
  context.fillText(max.toFixed(max < 10 ? 1 : 0), 2, 12);
  context.fillText("0", 30, bottom);
  if (points > 1) {
    context.fillText(`${Math.round(((points - 1) * secondsPerPoint) / 60)} min ago`, left, height - 4);
    context.fillText("now", width - 28, height - 4);
  }
  series.forEach((line, index) => {
    context.strokeStyle = line.colour;
    context.beginPath();
    line.values.forEach((value, i) => {
      const x = left + ((width - left - 4) * i) / Math.max(1, points - 1);
      const y = bottom - ((bottom - 8) * value) / max;
      if (i === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
    context.fillStyle = line.colour;
    context.fillText(line.label, left + 8 + index * 130, 14);
  });
}
