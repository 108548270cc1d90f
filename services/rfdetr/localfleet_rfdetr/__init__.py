"""localfleet rfdetr: LocalAI's Detect with RF-DETR (torch) and YOLOv8-style ONNX detectors (ONNX Runtime)."""
