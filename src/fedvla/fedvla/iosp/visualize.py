"""What a person looks at to check a scene parse: the camera image annotated with the objects'
boxes and the selected patch tokens, coloured by group, and the boxes placed in the camera's
3-D frame for RViz markers. One colour per group, used by both."""
from __future__ import annotations

import numpy as np

from fedvla.iosp.parser import CameraParse
from fedvla.iosp.tokens import patch_edges
from fedvla.iosp.types import ObjectGroup

# RGB 0-255: target red, surrounding amber, background blue (distinguishable with red-green
# colour blindness by brightness as well as hue).
GROUP_COLORS: dict[ObjectGroup, tuple[int, int, int]] = {
    ObjectGroup.TARGET: (230, 40, 40),
    ObjectGroup.SURROUNDING: (255, 190, 0),
    ObjectGroup.BACKGROUND: (60, 120, 255),
}
GROUP_LETTERS = {ObjectGroup.TARGET: "T", ObjectGroup.SURROUNDING: "S", ObjectGroup.BACKGROUND: "B"}
TOKEN_TINT = 0.35  # opacity of a selected patch's group colour


def annotate(image: np.ndarray, parse: CameraParse, *, with_labels: bool = True) -> np.ndarray:
    """A copy of the RGB image with each group's selected patches tinted in the group's colour,
    each object's box outlined in its group's colour, and "name [T|S|B]" above it."""
    import cv2

    out = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).copy())
    height, width = out.shape[:2]
    if parse.grid[0] and parse.grid[1]:
        y_edges, x_edges = patch_edges((height, width), parse.grid)
        cols = parse.grid[1]
        for group in ObjectGroup:
            color = np.array(GROUP_COLORS[group], dtype=np.float32)
            for index in parse.selection.indices[group][parse.selection.valid[group]]:
                row, col = divmod(int(index), cols)
                patch = out[y_edges[row]:y_edges[row + 1], x_edges[col]:x_edges[col + 1]]
                patch[:] = ((1 - TOKEN_TINT) * patch + TOKEN_TINT * color).astype(np.uint8)
    thickness = max(1, round(min(height, width) / 240))
    scale = max(0.3, min(height, width) / 960)
    for detection, group in zip(parse.detections, parse.groups):
        x0, y0, x1, y1 = (int(round(v)) for v in detection.box)
        color = GROUP_COLORS[group]
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, thickness)
        if with_labels:
            cv2.putText(out, f"{detection.name} [{GROUP_LETTERS[group]}]", (x0, max(y0 - 3, 8)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return out


def box_in_camera(box: tuple[float, float, float, float], camera_matrix: np.ndarray, depth_m: float) -> np.ndarray:
    """(4, 3) corners of an image box (x0, y0, x1, y1 pixels) on the plane ``depth_m`` in front of
    a pinhole camera, in its optical frame (x right, y down, z forward), in order around the box."""
    fx, fy = camera_matrix[0, 0], camera_matrix[1, 1]
    cx, cy = camera_matrix[0, 2], camera_matrix[1, 2]
    x0, y0, x1, y1 = box
    # Pixel edges: the box spans [x0, x1) in pixels whose centres are at integers.
    pixels = np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5], [x0 - 0.5, y1 - 0.5]])
    return np.column_stack([(pixels[:, 0] - cx) / fx * depth_m, (pixels[:, 1] - cy) / fy * depth_m,
                            np.full(4, depth_m)])
