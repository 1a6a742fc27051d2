"""Example blocks and their block documents (``aios-fast block up <document>``):

- ``echo-block.json``: the echo block (``aios_fast.block:EchoBlock``);
- ``onnx-digits-block.json``: ``onnx_digits:DigitsBlock``, a real classifier served
  by ONNX Runtime with dynamic batching (extra ``[onnx]``).
"""
