"""Compiles a small pipeline with the kfp 2 compiler. Usage: python compile_pipeline.py OUT.yaml"""

import sys

from kfp import compiler, dsl


@dsl.component(base_image="python:3.11")
def say(msg: str) -> str:
    print(msg)
    return msg


@dsl.pipeline(name="hello-pipeline", description="kfsec test pipeline")
def hello(msg: str = "hi"):
    say(msg=msg)


if __name__ == "__main__":
    compiler.Compiler().compile(hello, sys.argv[1])
