"""Datasets from specs (digits, folder:, cifar10:, cifar100:, svhn:, tensors:), transforms, subsets."""
