"""Detection transfer: an SSL backbone fine-tuned as a torchvision detector with few labels."""
