"""ONNX models: RetinaFace face detection, face crops, the ConvNeXt V2 classifier, model bundles."""
