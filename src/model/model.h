/*
 * model.h - the model layer (src/model/): C models (model.c) and the AdamW
 * optimizer (optim.c). They need core only.
 */
#ifndef CKPT_MODEL_H
#define CKPT_MODEL_H

#include "core/core.h"

#endif /* CKPT_MODEL_H */
