"""The data: decoding images, dataset versions (DVC and git), synthetic digits, prepare's parts."""
