"""repvgg: train a multi-branch RepVGG, deploy it as a plain stack of 3x3 conv + ReLU."""
