"""The Hugging Face `datasets` features of a parquet export, written into its schema metadata.

    schema = with_hf_features(sft_schema(), image_lists=("images",))

`datasets.load_dataset("parquet", ...)` reads the features from the schema metadata key
`huggingface` (`{"info": {"features": {...}}}`, the JSON of `Features.to_dict()`) and uses the
declared feature of each column whose arrow type it matches. A column of encoded images is a list
of `{"bytes", "path"}` structs, which without the declaration loads as plain structs; declared as a
`Sequence` of `Image` it loads as images a trainer can use with no cast (TRL's vision SFT).

Written with pyarrow alone (no import of `datasets` at export time), in the form every `datasets`
since 3.0 reads: `Sequence` for lists of values or images, a one-element JSON list for a list of
structs (a `Sequence` of a dict would mean a dict of lists there), a JSON object for a struct.
"""

from __future__ import annotations

import json

import pyarrow as pa

# arrow type -> the dtype name of a datasets `Value`
_VALUE_DTYPES = {
    pa.bool_(): "bool", pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
    pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64",
    pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64",
    pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary", pa.large_binary(): "large_binary",
}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # what `datasets.Image` stores


def feature_of(arrow_type: pa.DataType) -> dict | list:
    """The `datasets` feature (as JSON data) that stores values of `arrow_type`."""
    if arrow_type in _VALUE_DTYPES:
        return {"dtype": _VALUE_DTYPES[arrow_type], "_type": "Value"}
    if pa.types.is_struct(arrow_type):
        return {f.name: feature_of(f.type) for f in arrow_type}
    if pa.types.is_list(arrow_type):
        item = arrow_type.value_type
        if pa.types.is_struct(item):
            return [feature_of(item)]
        return {"feature": feature_of(item), "_type": "Sequence"}
    raise ValueError(f"no datasets feature written for arrow type {arrow_type}")


def with_hf_features(schema: pa.Schema, image_lists: tuple[str, ...] = ()) -> pa.Schema:
    """`schema` with the `huggingface` metadata declaring its features; the columns named in
    `image_lists` (lists of {"bytes", "path"} structs) as lists of images."""
    features = {}
    for f in schema:
        if f.name in image_lists:
            if f.type != pa.list_(IMAGE_TYPE):
                raise ValueError(f"column {f.name!r} is {f.type}, not a list of {IMAGE_TYPE}")
            features[f.name] = {"feature": {"_type": "Image"}, "_type": "Sequence"}
        else:
            features[f.name] = feature_of(f.type)
    metadata = dict(schema.metadata or {})
    metadata[b"huggingface"] = json.dumps({"info": {"features": features}}).encode()
    return schema.with_metadata(metadata)
