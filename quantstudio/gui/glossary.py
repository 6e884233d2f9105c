"""Every plain-language explanation the app shows, in one place.

Tooltips, "What's this?" texts, the sentences on empty panels and the glossary (Help ▸
Glossary, and the README's "Glossary" section, which a test keeps in step with
:data:`TERMS`). One sentence each, in words a person who never quantized a model can
follow. A choice QuantStudio picks by default says "(recommended)".

No Qt here: plain strings, so the CLI or a report can use them too.
"""

from __future__ import annotations

from quantstudio.core.plan import Precision

RECOMMENDED = "(recommended)"

# ---------------------------------------------------------------- precisions
PRECISION_HELP = {
    Precision.INT8: (
        "INT8 (recommended): numbers stored as 8-bit integers. About 4x smaller and usually 2-4x faster "
        "on a CPU; may lose a little accuracy. Needs calibration data to choose the ranges."
    ),
    Precision.FP16: (
        "FP16: half-precision floating point. 2x smaller, nearly no accuracy loss; "
        "faster only on hardware with FP16 support (most CPUs gain little)."
    ),
    Precision.FP32: (
        "FP32: the original full-precision floating point. No change: the safest choice "
        "for layers that are sensitive to quantization."
    ),
}

# ---------------------------------------------------------------- settings
CALIBRATION_HELP = (
    "Calibration: the model is run on a few hundred of your images to measure the range "
    "of values inside every layer. INT8 uses those ranges, so use images like the ones the "
    "model will see in use. 256 (recommended) is plenty for most models."
)
CALIBRATION_METHOD_HELP = {
    "minmax": ("Min-max (recommended to start): the range covers every value seen. Simple and fast; "
               "a few extreme values widen it. If accuracy drops, try Percentile."),
    "entropy": ("Histogram: builds a histogram of the values and picks the range that loses the least: "
                "ONNX Runtime minimises the information lost (entropy, KL divergence), PyTorch the squared "
                "rounding error (MSE). Slower than min-max, often more accurate."),
    "percentile": ("Percentile: ignores the rarest extreme values (the top 0.01%), so a few outliers do not "
                   "widen the range. The first thing to try when min-max loses accuracy."),
}
MODE_HELP = {
    "static": ("Static INT8 (recommended): weights and activations (the values flowing between layers) in INT8, "
               "ranges measured on calibration data. The fastest on CPUs."),
    "dynamic": ("Dynamic INT8: weights in INT8, activation ranges computed while running. For Linear/LSTM-heavy "
                "models (text, speech); no calibration images needed."),
    "fp16": "FP16: every layer the plan leaves at INT8 runs in half precision instead. Almost lossless, rarely faster on a CPU.",
}
ENGINE_HELP = {
    "onnxruntime": ("ONNX Runtime (recommended): the engine does the quantizing. This one converts the model to "
                    "ONNX (a portable model format) and quantizes it there. Fast INT8 on x86 CPUs, works for every "
                    "kind of model file; gives an .onnx file."),
    "torch": ("PyTorch: quantizes the PyTorch model itself (FX graph mode). Needs the model's Python code "
              "(a state_dict or a whole saved model); gives a .pth (TorchScript) file that runs with PyTorch alone."),
    "tflite": ("TensorFlow Lite (LiteRT): converts the PyTorch model to a .tflite file for phones and small boards "
               "and quantizes it there; measured with LiteRT's own interpreter. Needs the PyTorch model and the "
               "optional tflite extra (pip install 'quantstudio[tflite]'; Linux x86_64 and macOS arm64)."),
}
BACKEND_HELP = {
    "auto": "Auto (recommended): chosen from this computer's processor.",
    "x86": "x86: Intel/AMD desktop and server processors (fbgemm/oneDNN kernels).",
    "qnnpack": ("ARM (qnnpack): phones, Raspberry Pi, Apple silicon. The model is built for ARM; its speed "
                "measured on an x86 PC says nothing about ARM."),
}
PER_CHANNEL_HELP = (
    "Per-channel (recommended): each output channel of a layer gets its own INT8 scale. Usually more "
    "accurate than one scale per layer (per-tensor), at no speed cost."
)
EQUALIZE_HELP = (
    "Equalize outlier channels (recommended): before quantizing, rebalance pairs of layers, and the "
    "channels shared by several blocks through their skip connections, so that no single channel is "
    "hundreds of times larger than the others. The model computes exactly the same, "
    "but INT8 keeps its accuracy where one huge channel would otherwise ruin it. No speed cost. "
    "PyTorch models (state_dict or pickled model) in INT8 only."
)
SENSITIVITY_HELP = (
    "After the run, quantize one layer at a time to INT8 and measure how much the output "
    "changes. The layers that change it most are the ones to keep in FP32 (right-click the "
    "tree). PyTorch models only; on a large model this adds about a minute."
)
MEMORY_HELP = (
    "After the run, load the original and the quantized model each in a fresh process and "
    "measure how much memory running them takes. Adds a few seconds."
)
RANDOM_DATA_LABEL = "Random data — speed only (accuracy not meaningful)"

# ---------------------------------------------------------------- fine-tuning (QAT, issue 14)
QAT_LABEL = "Fine-tune (QAT)"
QAT_HELP = (
    "Fine-tune (QAT, quantization-aware training): after calibration, train the INT8 model for a few epochs on "
    "your images while it computes as INT8 will, so it learns to cope with the rounding. Use it when INT8 loses "
    "too much accuracy and FP32 layers or another calibration did not help. Takes minutes instead of seconds; "
    "the epoch with the best validation result is kept. Needs the PyTorch model (state_dict or whole saved model)."
)
QAT_EPOCHS_HELP = ("Epochs: how many times training goes through your training images. 2 (recommended) is "
                   "usually enough; training stops early when the validation result stops improving.")
QAT_LR_HELP = ("Learning rate: how big each training step is. Auto (recommended) picks a small rate for "
               "fine-tuning; a larger one can undo what the model learned.")
QAT_BATCH_HELP = ("Batch size: images per training step. 32 (recommended); smaller needs less memory, "
                  "larger is a little faster per image.")
QAT_SIGNAL_CHOICES = (("auto", "Auto (recommended)"), ("labels", "Labels"), ("distill", "Distillation"))
QAT_SIGNAL_HELP = {
    "auto": "Auto (recommended): labels when your folder has class sub-folders, distillation otherwise.",
    "labels": "Labels: learn the right class of each image (needs one sub-folder per class).",
    "distill": ("Distillation: learn to give the same outputs as the original FP32 model. Needs no labels, "
                "so a folder of sample images is enough."),
}
QAT_NEEDS_TORCH = "QAT needs the PyTorch model (a state_dict or a whole saved model); {a_kind} cannot be fine-tuned."
QAT_NEEDS_STATIC = "QAT fine-tunes static INT8: choose the Static INT8 mode."
QAT_NEEDS_IMAGES = "QAT needs your own images: random data cannot teach the model anything."
QAT_NEEDS_LABELS = "Labels need a folder with one sub-folder per class: choose Distillation or Auto."
QAT_ESTIMATE_UNAVAILABLE = "estimate unavailable"
QAT_ESTIMATE_NEEDS_DATA = "choose data for an estimate"
QAT_NO_TRAINING_IMAGES = "no images left to train on: lower Evaluation (Samples) or add images"
STOP_TRAINING = "Stop training (keep best epoch)"
STOP_TRAINING_HELP = ("Stop fine-tuning now and keep the epoch with the best validation result so far; "
                      "the run then finishes (evaluation, timing) as usual. Press again to cancel the whole run.")
STOPPING_TRAINING = "Stopping training: keeping the best epoch so far…"
TRAINING_HOVER = (
    "Training loss (lower is better): light, every few training steps; dark, the mean of each epoch. "
    "Validation: the fine-tuned model on images kept out of training, after each epoch; epoch 0 (dashed line) is "
    "where it started, the plain INT8 result. The starred epoch is the one kept."
)
METRIC_WORDS = {"top1": "top-1", "agreement": "agreement"}

# Labels for the choices, with the default marked (for the Data & settings panel).
ENGINE_CHOICES = (("onnxruntime", "ONNX Runtime (recommended)"), ("torch", "PyTorch"))
MODE_CHOICES = (("static", "Static INT8 (recommended)"), ("dynamic", "Dynamic INT8"), ("fp16", "FP16"))
BACKEND_CHOICES = (("auto", "Auto — this CPU (recommended)"), ("x86", "x86 (Intel/AMD)"), ("qnnpack", "ARM (qnnpack)"))
CALIBRATION_CHOICES = (("minmax", "Min-max (recommended)"), ("entropy", "Entropy (histogram)"), ("percentile", "Percentile"))

# ---------------------------------------------------------------- opening a model
STATE_DICT_HELP = (
    "This file is a state_dict: it holds only the weights, not the network they belong to. Choose that network "
    "(architecture); the best guess is pre-selected, and the number of classes is read from the weights."
)
INPUT_SHAPE_HELP = (
    "The size of one input the model was trained on: batch, channels, height, width. 1,3,224,224 is one colour "
    "image (3 channels) of 224x224 pixels; a grayscale 28x28 digit model would be 1,1,28,28."
)

# ---------------------------------------------------------------- results
SQNR_HELP = (
    "SQNR (dB): how far the quantized output is from the original — signal-to-quantization-noise ratio. "
    "Higher is better: 30 dB or more is very close, below 20 dB is worth a look; every 10 dB is 10x less error."
)
AGREEMENT_HELP = (
    "Agreement: how often the quantized model predicts the same class as the original model, "
    "on the same images (100 % = never changes its answer). Needs no labels."
)
ACCURACY_HOVER = (
    "Top-1: how often the best guess is right. Top-5: how often the right class is among the 5 best guesses. "
    "F1: balances missed and wrong answers per class. " + AGREEMENT_HELP
)
LATENCY_HOVER = (
    "Latency: how long one batch takes (lower is better), measured many times on this computer; "
    "throughput: images per second at each batch size (higher is better)."
)
SIZE_HOVER = (
    "Model size: the file on disk. Memory running it: how much the peak memory of a fresh process grows "
    "when it loads the model and runs one batch (the runtime itself not counted)."
)
LAYER_ERROR_HOVER = SQNR_HELP + " Click a bar to select that layer in the tree."
CONFUSION_HOVER = (
    "Confusion matrix: rows are the true classes, columns what the model predicted; "
    "everything off the diagonal is a mistake."
)
TRADEOFF_HOVER = "Each point is one run: further left is faster, higher is more accurate. The best trade-off is top left."

# The layer tree's column headers (hover a header).
COLUMN_HELP = {
    "Layer": "The layer's name inside the model; a block (e.g. features) holds the layers indented below it.",
    "Precision": "How the layer will run: INT8 (small, fast; recommended), FP16 (half precision) or FP32 (original). "
                 "Double-click to change.",
    "Type": "The kind of layer (Conv2d, Linear, ...).",
    "Output shape": "The size of the layer's output for one input, e.g. 1x64x56x56: 64 channels of 56x56 values.",
    "Params": "Learned numbers (weights) in the layer and everything inside it; they decide the model's size.",
    "MACs": "Multiply-accumulate operations for one input: how much computing the layer needs (M = million, G = billion).",
    "SQNR (dB)": "After a run: " + SQNR_HELP,
    "Sensitivity": "After a run: how much the model's output changes (%) when only this layer is INT8 — "
                   "keep the highest in FP32.",
}

# What an empty panel says it will show, and how to fill it.
EMPTY_PANEL = {
    "latency": "Press Quantize to time the original and the INT8 model here: how long one batch takes, "
               "and how many images per second each handles.",
    "accuracy": "Press Quantize to compare the original and the INT8 model here: top-1, top-5, F1 and "
                "how often they agree.",
    "size": "Press Quantize to compare the size of the original and the INT8 model here, and the memory "
            "each needs to run.",
    "layer_error": "Press Quantize to see each layer's error here (SQNR, higher is better); "
                   "click a bar to find its layer in the tree.",
    "confusion": "Press Quantize with a labeled image folder (one sub-folder per class) to see here "
                 "which classes the model mixes up.",
    "training": "Tick Fine-tune (QAT) in Data & settings and press Quantize: the training loss and the "
                "validation result of each epoch appear here, next to the plain INT8 starting point.",
    "tradeoff": "Every run you make becomes a point here — speed against accuracy — so you can pick the "
                "best. Press Quantize for the first one.",
}

HINT_DEMO = (
    "This is the demo: a digit classifier with its images already chosen on the left. "
    "Press <b>Quantize</b> to make an INT8 copy and compare it with the original."
)
QUANTIZE_HELP = (
    "Quantize with the current plan and settings, then compare the original and the quantized model "
    "(accuracy, speed, size) in the panels on the right (Ctrl+R)."
)

# ---------------------------------------------------------------- glossary
# term -> one plain sentence. Help ▸ Glossary shows it; README's "Glossary" lists the same terms.
TERMS: dict[str, str] = {
    "Quantization": "Storing a model's numbers with fewer bits (INT8 instead of FP32) so it gets smaller and faster, "
                    "at the cost of a little accuracy.",
    "INT8 / FP16 / FP32": "Number formats: 8-bit integers (4x smaller than the original), 16-bit floats (2x smaller), "
                          "32-bit floats (the original).",
    "Layer": "One step of the network (a convolution, a linear layer, …); each can get its own precision.",
    "Engine": "The library that does the quantizing: ONNX Runtime (recommended; gives an .onnx file) or PyTorch "
              "(gives a .pth file).",
    "Static / Dynamic INT8": "Static (recommended) measures value ranges on your images beforehand and is the "
                             "fastest; dynamic measures them while running and needs no images.",
    "Calibration": "Running the model on a few hundred of your images to measure the range of values in every layer.",
    "Min-max / Entropy / Percentile": "Ways to choose those ranges: all values seen (recommended to start), the "
                                      "range that loses the least information, or all but the rarest 0.01 %.",
    "Per-channel": "Each output channel of a layer gets its own scale (recommended); per-tensor uses one per layer.",
    "Target CPU (x86 / qnnpack)": "The processor the model will run on: x86 for Intel/AMD PCs and servers, qnnpack "
                                  "for ARM (phones, Raspberry Pi); Auto picks this computer's (recommended).",
    "SQNR (dB)": "How close the quantized output is to the original; higher is better, 30 dB or more is very close.",
    "Agreement": "How often the quantized model gives the same answer as the original, on the same images.",
    "Top-1 / Top-5 / F1": "How often the best guess is right, how often the right answer is in the best five, and "
                          "a balance of missed and wrong answers.",
    "Sensitivity": "How much the model's output changes when only one layer is INT8; keep the most sensitive "
                   "layers in FP32.",
    "Latency / Throughput": "Time for one batch (lower is better) and images per second (higher is better).",
    "Params / MACs": "Params: the learned numbers in a layer. MACs: multiply-accumulate operations for one input, "
                     "a measure of how much computing it needs.",
    "Input shape (1,3,224,224)": "The size of one input: batch of 1, 3 colour channels, 224 pixels high and 224 wide.",
    "state_dict": "A PyTorch file that holds only the weights; you pick the network (architecture) they belong to.",
    "TorchScript": "A PyTorch model saved with its structure, so it runs with PyTorch alone (QuantStudio's .pth exports).",
    "ONNX": "A portable model format that runs with ONNX Runtime on many systems (QuantStudio's .onnx exports).",
    "Variant": "One Quantize run: its precisions, settings and results, kept in the Variants table.",
    "Recipe": "A small JSON file beside every export with the exact settings, to reproduce the result.",
    "Fine-tune (QAT)": "Quantization-aware training: a short training of the INT8 model on your images (with labels, "
                       "or copying the original model's answers) that wins back accuracy plain INT8 lost.",
    "Project (.qsproj)": "Your model, data settings, precisions and every variant, saved to reopen later.",
}

# ---------------------------------------------------------------- automatic mixed precision (issue 13)
# The budget field of the Data & settings panel, the Auto button, the "Auto precision" panel.
BUDGET_CHOICES = (("drop", "Max accuracy drop (points)"), ("agreement", "Min agreement (%)"))
BUDGET_HELP = (
    "What Auto may give up. Max accuracy drop: how many points of top-1 below the original are acceptable "
    "(needs labeled data: one sub-folder per class). Min agreement: how often the quantized model must give the "
    "original's answer (any data). It follows your data until you choose one yourself."
)
BUDGET_DEFAULTS = {"drop": 1.0, "agreement": 99.0}
AUTO_HELP = (
    "Auto precision: tries calibration methods, then puts layers back to FP32 in sensitivity order, judging each "
    "plan on images calibration never saw and timing it; the fastest plan within the budget wins and is applied "
    "to the layer tree (one Ctrl+Z undoes it). The chart of every plan tried is in the Auto precision panel "
    "(Ctrl+Shift+R)."
)
AUTO_CANCEL_HELP = (
    "Stop the search: the best plan found so far is kept, measured and applied, as if the search had ended there."
)
AUTO_CANCELLING = "Stopping the search: keeping the best plan found so far…"
AUTO_NOT_AVAILABLE = "This build's Quantize pipeline cannot search for a plan yet (no budget parameter)."
CANDIDATES_HOVER = (
    "Each point is one plan the search tried: further left is faster, higher is more accurate (measured on "
    "images calibration never saw). The line joins the plans no other plan beats on both; the dashed line is "
    "your budget; the star is the plan chosen: the fastest one above the line."
)
EMPTY_PANEL["candidates"] = (
    "Set an accuracy budget in the Data & settings panel and press Auto: every plan the search tries appears "
    "here as a point (speed against accuracy), and the fastest plan within the budget is applied to the tree."
)
COLUMN_HELP["Isolated SQNR (dB)"] = (
    "After a run: this layer's own error, measured with every other layer in floating point — it does not "
    "inherit the errors of the layers before it, so a low value points at the culprit. Higher is better."
)
FP32_WHY_TITLE = "Why FP32"
