"""Export (torch world): ``python -m univl_fast.export`` turns a checkpoint into an engine dir
(ONNX graphs in fp32 / fp16 / int8, optional TensorRT plans, the tokenizer vocabulary and a
verified ``manifest.json``) that the torch-free runtime loads."""
