"""The image+audio fusion model: network, AV-digits data, training, evaluation, ONNX export."""
