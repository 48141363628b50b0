"""Entry point of the controller's child process (:class:`UrControllerSim` starts ``python -m`` this
module with one end of a socketpair)."""
import sys

from fedvla.twin.ur_controller.process import _child_main

if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
