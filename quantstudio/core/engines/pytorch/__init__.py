"""The PyTorch engine (see engine.py): torch.ao FX graph mode; qconfig, fx, fp16, cancel and runner are its parts."""
