"""TFLite Model Metadata inside the `.tflite` file, written with MediaPipe's `metadata_writers`.

MediaPipe's `ImageSegmenter`, Android Studio's model binding and the LiteRT support
library read the metadata embedded in the file (a `TFLITE_METADATA` buffer and a zip of
associated files appended to the flatbuffer), not a sidecar. `embed_metadata` writes:
the model's name and description, the image input (RGB; `NormalizationOptions` as mean
and std for a float input), the segmentation output with its label file and, for
MediaPipe, the output activation (`SOFTMAX`: the outputs are logits, MediaPipe's confidence
masks their softmax; the category mask is their argmax).

MediaPipe is the maintained writer: tflite-support 0.4.4 (its last release) pins
protobuf < 4, which TensorFlow 2.21 cannot run with. The MediaPipe 1.2.3 wheel ships the
writer but not its compiled helper `_pywrap_metadata_version` (the minimum metadata
parser version a buffer needs); `_minimum_parser_version` computes it in Python from the
same table of schema members and is registered under that name when the wheel lacks it.
"""

import json
import sys
import types

from itnet_keras.export.flatbuffer import parse, text_of

WRITER_MISSING = "embedding TFLite metadata needs mediapipe (pip install 'mediapipe>=1.2.3', in the export extra)"

def _version(text):
    return tuple(int(part) for part in text.split("."))


def _minimum_parser_version(buffer):
    """The lowest metadata parser version that understands every field of `buffer`: the
    latest of the schema members it uses that came after 1.0.0, with the version that
    added each (mediapipe/tasks/cc/metadata/metadata_version.cc)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    tokenizers = {fb.ProcessUnitOptions.BertTokenizerOptions: "1.1.0",
                  fb.ProcessUnitOptions.SentencePieceTokenizerOptions: "1.1.0",
                  fb.ProcessUnitOptions.RegexTokenizerOptions: "1.2.1"}
    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytes(buffer), 0))
    found = {"1.0.0"}

    def files(items):
        for item in items or []:
            if item.type == fb.AssociatedFileType.VOCABULARY:
                found.add("1.0.1")
            if item.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                found.add("1.4.0")
            if item.version is not None:
                found.add("1.4.1")

    def units(items):
        for item in items or []:
            if item.optionsType in tokenizers:
                found.add(tokenizers[item.optionsType])

    def tensors(items):
        for item in items or []:
            files(item.associatedFiles)
            units(item.processUnits)
            content = item.content
            if content is not None and content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.add("1.3.0")

    for graph in meta.subgraphMetadata or []:
        tensors(graph.inputTensorMetadata)
        tensors(graph.outputTensorMetadata)
        files(graph.associatedFiles)
        for units_of_graph in (graph.inputProcessUnits, graph.outputProcessUnits):
            if units_of_graph is not None:
                found.add("1.1.0")
                units(units_of_graph)
        if graph.inputTensorGroups is not None or graph.outputTensorGroups is not None:
            found.add("1.2.0")
        if graph.customMetadata is not None:
            found.add("1.5.0")
    files(meta.associatedFiles)
    return max(found, key=_version)


def _writers():
    """MediaPipe's `metadata`, `metadata_writer` and `image_segmenter` modules."""
    package = "mediapipe.tasks.cc.metadata.python"
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        raise ImportError(WRITER_MISSING) from None
    try:
        __import__(package + "._pywrap_metadata_version")
    except ImportError:  # the wheel lacks it: register the Python one under its name
        helper = types.ModuleType(package + "._pywrap_metadata_version")
        helper.GetMinimumMetadataParserVersion = _minimum_parser_version
        for name in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", package):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[package]._pywrap_metadata_version = sys.modules[helper.__name__] = helper
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import image_segmenter, metadata_writer

    return metadata, metadata_writer, image_segmenter


def _first_subgraph_tensors(data):
    """[(name, shape)] of the inputs and outputs of the file's first subgraph."""
    graph = parse(data).subgraphs[0]
    describe = lambda index: (text_of(graph.tensors[index].name), list(graph.tensors[index].shape))  # noqa: E731
    return [describe(i) for i in graph.inputs], [describe(i) for i in graph.outputs]


def embed_metadata(data, name, description, labels, normalization, num_classes, input_type="float32"):
    """`.tflite` bytes with the metadata inside; returns the new bytes.

    The metadata describes the first subgraph (the file's only one in the static flavour,
    one signature of a loop file): `image` as an RGB image input (with the normalization
    `pixel * scale + offset`, as MediaPipe's mean/std, for a float input), outputs with C
    channels as segmentation logits with the label file (activation SOFTMAX: MediaPipe's
    confidence masks, its default output, are then probabilities), any other tensor as a feature.
    A uint8 or int8 (`input_type`) image is camera bytes that the file normalizes: mean 0, std 1."""
    _, metadata_writer, image_segmenter = _writers()
    writer = metadata_writer.MetadataWriter(bytearray(data))
    writer.add_general_info(name, description)
    scale, offset = normalization
    inputs, outputs = _first_subgraph_tensors(data)
    for tensor, shape in inputs:
        if len(shape) == 4 and shape[-1] == 3:
            mean, std = ([0.0 - offset / scale], [1 / scale]) if input_type == "float32" else ([0.0], [1.0])
            given = {"float32": "normalized as pixel * %.10g + %.10g" % (scale, offset),
                     "uint8": "camera bytes 0..255 (the file normalizes them)",
                     "int8": "camera bytes minus 128, byte ^ 0x80 (the file normalizes them)"}[input_type]
            writer.add_image_input(mean, std, name="image", description="RGB camera image, " + given)
        else:
            writer.add_feature_input(tensor, f"input {tensor} {shape}")
    segmentation = any(len(shape) == 4 and shape[-1] == num_classes for _, shape in outputs)
    if segmentation:
        writer.add_custom_metadata(image_segmenter.ImageSegmenterOptionsMd(image_segmenter.Activation.SOFTMAX))
    for tensor, shape in outputs:
        if len(shape) == 4 and shape[-1] == num_classes:
            writer.add_segmentation_output(metadata_writer.Labels().add(list(labels)), name="logits",
                                           description="logits per class: MediaPipe's confidence masks are their softmax, "
                                                       "its category mask their argmax")
        else:
            writer.add_feature_output(tensor, f"output {tensor} {shape}")
    with_metadata, _ = writer.populate()
    del writer  # removes its folder of label files now, not at interpreter exit
    return bytes(with_metadata)


def read_metadata(path):
    """The metadata inside a `.tflite` file as a dict (MediaPipe's JSON view), with
    `associated_files`: {name: text} of the files packed with it."""
    metadata, _, _ = _writers()
    displayer = metadata.MetadataDisplayer.with_model_file(str(path))
    result = json.loads(displayer.get_metadata_json())
    result["associated_files"] = {name: displayer.get_associated_file_buffer(name).decode()
                                  for name in displayer.get_packed_associated_file_list()}
    return result
