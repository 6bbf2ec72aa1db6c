"""Standalone training (e.g. a Kubeflow TFJob): Transform's outputs in, a serving SavedModel out, no TFX run.

python -m components.train_standalone --transformed-examples DIR --transform-graph DIR --output DIR
Under a TF_CONFIG naming several workers every worker runs this; the chief (or worker 0) writes --output.
Training follows Hyperparameters.budget; with a Split-eval/ of >= 1,000 examples beside Split-train/ it
early-stops on its loss. What was used is written to <log-dir>/training.json.
"""
import argparse
import dataclasses
import os
import sys
from typing import List, Optional

from components import runtime
from components.hyperparameters import Hyperparameters


def main(argv: Optional[List[str]] = None) -> int:
    runtime.prepare()  # before TensorFlow is imported (below, after the flags are parsed)
    defaults = Hyperparameters()
    parser = argparse.ArgumentParser(prog="python -m components.train_standalone", description=__doc__)
    parser.add_argument("--transformed-examples", required=True,
                        help="Transform's transformed_examples dir (holding Split-train/) or a file pattern")
    parser.add_argument("--transform-graph", required=True, help="Transform's transform_graph dir")
    parser.add_argument("--output", required=True, help="where the SavedModel is written")
    parser.add_argument("--log-dir", help="TensorBoard logs (default: <output>-logs)")
    for field in dataclasses.fields(defaults):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    args = parser.parse_args(argv)

    hparams = Hyperparameters(**{f.name: getattr(args, f.name) for f in dataclasses.fields(defaults)})
    import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    from components import trainer  # pylint: disable=g-import-not-at-top
    strategy = runtime.select_strategy(hparams.cpu_replicas)  # first: collectives need an unused runtime
    from tfx.components.trainer.fn_args_utils import DataAccessor  # pylint: disable=g-import-not-at-top
    from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top

    examples = args.transformed_examples
    pattern, eval_pattern = examples, None
    if os.path.isdir(os.path.join(examples, "Split-train")):
        pattern = os.path.join(examples, "Split-train", "*")
        if os.path.isdir(os.path.join(examples, "Split-eval")):
            eval_pattern = os.path.join(examples, "Split-eval", "*")
    if not os.path.isdir(os.path.join(args.transform_graph, "transform_fn")):
        parser.error(f"--transform-graph {args.transform_graph}: not a Transform graph (no transform_fn/ inside)")
    num_examples = trainer.count_examples([pattern])
    if not num_examples:
        parser.error(f"--transformed-examples {examples}: no examples found")
    budget = hparams.budget(num_examples, strategy.num_replicas_in_sync)

    tf_transform_output = tft.TFTransformOutput(args.transform_graph)
    # The same reader TFX's Trainer hands to run_fn (GZIP'd TFRecords of tf.Examples).
    data_accessor = DataAccessor(
        tf_dataset_factory=lambda files, options, schema: tfxio.TFExampleRecord(
            file_pattern=files, schema=schema).TensorFlowDataset(options),
        record_batch_factory=None, data_view_decode_fn=None)

    def dataset_fn(input_context):
        return trainer.dataset(data_accessor, [pattern], tf_transform_output, hparams, input_context,
                               budget.batch_per_replica)

    eval_data = trainer.early_stopping_data(data_accessor, [eval_pattern] if eval_pattern else [],
                                            tf_transform_output, hparams, budget.global_batch)
    wrote = trainer.train_and_export(strategy, dataset_fn, num_examples, tf_transform_output, hparams, args.output,
                                     args.log_dir or args.output.rstrip("/") + "-logs", eval_data)
    print(f"model written to {args.output}" if wrote else "trained; the chief (worker 0) writes the model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
