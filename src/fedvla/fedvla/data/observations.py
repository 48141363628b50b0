"""What the policy observes, from sensor messages: image decoding, the policy's image
preprocessing and its proprio from a joint state. Shared by the policy runtime, the policy node and
the rosbag importer, so a bag becomes exactly the inputs the robot's policy would see.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# sensor_msgs/Image encodings this stack reads: dtype and channels.
IMAGE_ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "mono8": (np.uint8, 1), "16UC1": (np.uint16, 1)}


def decode_image(encoding: str, height: int, width: int, step: int, data: bytes | np.ndarray) -> np.ndarray:
    """The pixels of a sensor_msgs/Image (any object with its fields: rclpy's or rosbags'), colour as
    RGB (H, W, 3), single-channel as (H, W); rows padded to ``step`` bytes are cropped."""
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r} (supported: {', '.join(IMAGE_ENCODINGS)})")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    itemsize = np.dtype(dtype).itemsize
    flat = np.frombuffer(bytes(data), dtype=dtype)
    if step < width * channels * itemsize or flat.size * itemsize != step * height:
        raise ValueError(f"{encoding} image of {width}x{height} with step {step} cannot hold {flat.size * itemsize} "
                         "bytes of data")
    rows = flat.reshape(height, step // itemsize)[:, : width * channels]
    if channels == 1:
        return rows
    image = rows.reshape(height, width, channels)
    return image[..., ::-1] if encoding == "bgr8" else image


def image_from_message(msg) -> np.ndarray:
    """:func:`decode_image` of a sensor_msgs/Image message object."""
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data)


def policy_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """(V, 3, size, size) uint8 from V RGB images (H, W, 3) of any size: what a policy trained on
    ``size``-pixel square images sees. Other sizes are resized (bilinear, antialiased); the aspect
    ratio is not kept, as in training data recorded the same way."""
    import torch  # here: the nodes that only decode images (driver, scene parser) start without torch
    import torch.nn.functional as F

    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(images):  # one at a time: cameras may differ in size
        chw = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # a copy: decoded images are read-only
        if chw.shape[-2:] != (size, size):
            chw = F.interpolate(chw[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        out[i] = chw.numpy()
    return out


def proprio_from_joint_state(names: Sequence[str], positions: Sequence[float], joint_names: Sequence[str],
                             proprio_dim: int) -> np.ndarray:
    """The policy's proprio from a sensor_msgs/JointState's names and positions: the positions of
    ``joint_names`` in that order, or without names the first ``proprio_dim`` (ValueError if the
    message lacks them). Shared by the policy node and the bag importer."""
    if joint_names:
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in joint_names if n not in index]
        if missing:
            raise ValueError(f"has no joints {missing} (it has {list(names)}): set proprio_joint_names to the "
                             "recorded names")
        return np.array([positions[index[n]] for n in joint_names], dtype=np.float32)
    if len(positions) < proprio_dim:
        raise ValueError(f"has {len(positions)} positions, the policy needs {proprio_dim}")
    return np.asarray(positions[:proprio_dim], dtype=np.float32)
